"""A bundle built to measure what a system costs, not what it knows: any edge and expert architecture at
any input size (DeiT-Tiny and DeiT-Small at 224x224 by default), weights untrained (seeded) unless
weights files are given, tau set on the images it will stream so that a chosen share is offloaded.

Latency, bytes and energy do not depend on what the weights have learned, so the bench can measure the
paper's scale on a machine that cannot train it; accuracy is not measured with such a bundle, and its
``system.json`` says so (``data.name`` is ``cost-only``, validation accuracy 0, the weights' origin in
``data.config``). It is an ordinary bundle otherwise: ``askexpert serve`` and ``edge`` run it.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import askexpert
from askexpert.config import ModelConfig
from askexpert.contract.bundle import System, open_system, sha256_file
from askexpert.contract.labels import OTHER_NAME
from askexpert.contract.schema import (
    SCHEMA_VERSION,
    SYSTEM_FILE,
    DataIdentity,
    ExpertEntry,
    GeneralEntry,
    GeneralistEntry,
    OperatingPoint,
    Partition,
    RoutingSpec,
    SystemManifest,
)
from askexpert.errors import ConfigError
from askexpert.models.checkpoint import open_checkpoint, save_checkpoint
from askexpert.models.factory import build_model, resolve_spec
from askexpert.routing.policy import confidence_scores
from askexpert.routing.thresholds import tau_for_offload
from askexpert.system.build import entry_fields

COST_ONLY = "cost-only"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CostSystem:
    """What a cost bundle holds: the edge model, the expert model (each expert and the general model),
    how many classes and experts, and where the weights come from (None: untrained, ``seed``)."""

    generalist: str = "deit-edge-224"
    expert: str = "deit-expert-224"
    classes: int = 100
    experts: int = 4
    generalist_weights: Path | None = None
    expert_weights: Path | None = None
    seed: int = 0

    @property
    def size(self) -> int:
        """The input side of the edge model (a preset's, else timm's default 224)."""
        from askexpert.models.presets import PRESETS

        preset = PRESETS.get(self.generalist)
        return preset.size if preset is not None else 224

    def weights(self) -> str:
        if self.generalist_weights is None and self.expert_weights is None:
            return f"untrained (timm's initialisation, seed {self.seed})"
        return (f"generalist from {self.generalist_weights or f'untrained (seed {self.seed})'}, experts and general "
                f"model from {self.expert_weights or f'untrained (seed {self.seed})'}")


def _model(name: str, classes: int, weights: Path | None, seed: int) -> tuple[torch.nn.Module, object]:
    cfg = ModelConfig(name=name, pretrained=weights is not None, pretrained_file=str(weights) if weights else None)
    spec, pretrained = resolve_spec(cfg, num_classes=classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(seed)
    return build_model(spec, pretrained=pretrained).eval(), spec


def _partition(classes: int, experts: int) -> Partition:
    if not 1 <= experts <= classes:
        raise ConfigError(f"{experts} experts over {classes} classes", fix="give 1..classes experts")
    names = [f"class-{c:03d}" for c in range(classes)]
    groups = [a.tolist() for a in np.array_split(np.arange(classes), experts)]
    return Partition(method="contiguous (cost bundle)", class_names=names, experts=groups)


def confidences(generalist: torch.nn.Module, spec, images: np.ndarray) -> np.ndarray:
    """The generalist's max-probability (temperature 1) on ``images`` (uint8 [N, C, H, W])."""
    from askexpert.data.transforms import to_model_input

    with torch.inference_mode():
        logits = torch.cat([generalist(to_model_input(torch.from_numpy(images[i:i + 16]), spec.input))
                            for i in range(0, len(images), 16)])
    return confidence_scores(torch.softmax(logits.float(), 1).numpy())


def build_cost_bundle(out: Path, system: CostSystem, images: np.ndarray, *, offload: float = 0.3, k: int = 3,
                      overwrite: bool = False) -> System:
    """Write the cost bundle of ``system`` into ``out``, tau set so that a share ``offload`` of ``images``
    (the images the bench streams) is offloaded."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty", fix="choose another directory, or overwrite it")
        shutil.rmtree(out)
    staging = out.with_name(f".{out.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    partition = _partition(system.classes, system.experts)
    gen, gen_spec = _model(system.generalist, system.classes, system.generalist_weights, system.seed)
    conf = confidences(gen, gen_spec, images)
    tau = tau_for_offload(conf, offload)
    share = 100 * float(np.mean(conf < tau))
    stem = save_checkpoint(staging / "generalist" / "model", gen, spec=gen_spec, kind="generalist",
                           class_names=partition.class_names, extra={"weights": system.weights()})
    from askexpert.models.onnx_export import export_onnx

    export_onnx(stem, staging / "generalist.onnx")
    entries = []
    for e, subset in enumerate(partition.experts):
        model, spec = _model(system.expert, len(subset) + 1, system.expert_weights, system.seed + 1 + e)
        stem = save_checkpoint(staging / "experts" / f"expert-{e}" / "model", model, spec=spec, kind="expert",
                               class_names=partition.names(e) + [OTHER_NAME], extra={"expert_id": e, "subset": subset})
        entries.append(ExpertEntry(id=str(e), classes=subset, class_names=partition.names(e), temperature=1.0,
                                   **_entry(stem, staging)))
    general, spec = _model(system.expert, system.classes, system.expert_weights, system.seed + 1 + system.experts)
    stem = save_checkpoint(staging / "general" / "model", general, spec=spec, kind="general",
                           class_names=partition.class_names)
    general_entry = GeneralEntry(temperature=1.0, **_entry(stem, staging))
    gen_entry = GeneralistEntry(onnx="generalist.onnx", **_entry(staging / "generalist" / "model", staging))
    empty = hashlib.sha256(b"").hexdigest()
    files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
    manifest = SystemManifest(
        schema_version=SCHEMA_VERSION, name=f"{out.name} (cost bundle: {system.weights()}; accuracy not measured)",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), askexpert_version=askexpert.__version__,
        classes=partition.class_names, input=gen_spec.input,
        data=DataIdentity(name=COST_ONLY, config={"weights": system.weights(), "tau_from_images": len(images)},
                          val_images=0, test_images=0, val_labels_sha256=empty, test_labels_sha256=empty),
        partition=partition,
        routing=RoutingSpec(temperature=1.0, tau=tau, k=k, operating_point=OperatingPoint(
            target="offload", value=offload, val_offload_rate=share, val_accuracy=0.0)),
        generalist=gen_entry, experts=entries, general=general_entry, files=files)
    (staging / SYSTEM_FILE).write_text(manifest.model_dump_json(indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(out)
    return open_system(out)


def _entry(stem: Path, root: Path) -> dict:
    """A checkpoint written in place into the bundle (``root``): its entry, its source saying so."""
    relative = str(stem.relative_to(root))
    return entry_fields(open_checkpoint(stem), relative, f"{COST_ONLY}: {relative}")
