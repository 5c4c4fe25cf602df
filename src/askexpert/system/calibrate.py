"""Build-time calibration: every model's logits on validation and test, checked to be on the same
images, the temperatures fitted on validation, tau chosen for an operating point.

Used by ``askexpert build-system`` (which writes the result into ``system.json``) and by the offline
evaluation (``askexpert evaluate-system``), so both compute the same numbers from the same code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from askexpert.contract.protocol import infer_response
from askexpert.contract.schema import CurvePoint, DataIdentity, InputSpec, OperatingCurve, OperatingPoint, Partition
from askexpert.errors import ConfigError
from askexpert.models import read_meta
from askexpert.models.checkpoint import checkpoint_stem
from askexpert.routing import (
    ALL,
    ExpertAnswers,
    RoutingPolicy,
    confidence_scores,
    finalize,
    fit_temperature,
    membership_matrix,
    route,
    softmax,
    system_metrics,
    tau_for_accuracy,
    tau_for_offload,
)
from askexpert.training.evaluate import subset_targets
from askexpert.training.logits import cached_logits

_SPLIT_KEYS = ("name", "val_fraction", "test_fraction", "split_seed", "val_subset", "test_subset")


@dataclass
class Outputs:
    """A model's logits and the labels of the images they were computed on, per split (NumPy)."""

    label: str
    checkpoint: Path
    val_logits: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    data_config: dict


def outputs_of(checkpoint: Path, label: str, device: str = "auto") -> Outputs:
    stem = checkpoint_stem(checkpoint)
    (vz, vy), (tz, ty) = (cached_logits(stem, s, device=device) for s in ("val", "test"))
    return Outputs(label, stem, vz.numpy(), vy.numpy(), tz.numpy(), ty.numpy(),
                   read_meta(stem).dataset.config)


def require_same_images(reference: Outputs, other: Outputs) -> None:
    """Refuse models evaluated on other validation or test images than the reference (the generalist):
    their logits would be matched by row position and every figure would be wrong."""
    for split in ("val", "test"):
        a, b = getattr(reference, f"{split}_labels"), getattr(other, f"{split}_labels")
        if a.shape == b.shape and np.array_equal(a, b):
            continue
        differs = [f"{k} {other.data_config.get(k)!r} vs {reference.data_config.get(k)!r}" for k in _SPLIT_KEYS
                   if other.data_config.get(k) != reference.data_config.get(k)]
        detail = (f"{len(b)} vs {len(a)} images" if a.shape != b.shape
                  else f"labels differ at {int((a != b).sum())} of {len(a)} positions")
        raise ConfigError(
            f"{other.label} ({other.checkpoint}) was evaluated on other {split} images than {reference.label} "
            f"({detail}; data config: {', '.join(differs) or 'same split settings, other files'})",
            fix="train every model of a system with the same data config (dataset, split_seed, val/test subsets)")


def data_identity(reference: Outputs) -> DataIdentity:
    def digest(labels: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()

    cfg = {k: v for k, v in reference.data_config.items() if k not in ("root", "download")}
    return DataIdentity(name=str(cfg.get("name", "?")), config=json.loads(json.dumps(cfg, default=str)),
                        val_images=len(reference.val_labels), test_images=len(reference.test_labels),
                        val_labels_sha256=digest(reference.val_labels),
                        test_labels_sha256=digest(reference.test_labels))


@dataclass
class ExpertSet:
    """One set of experts: their subsets, temperatures and answers on validation and test."""

    label: str
    subsets: list[list[int]]
    temperatures: list[float]
    val: ExpertAnswers
    test: ExpertAnswers
    checkpoints: list[Path]

    def membership(self, num_classes: int) -> np.ndarray:
        return membership_matrix(self.subsets, num_classes)


def expert_run(run_dir: Path) -> tuple[Partition, list[Path], Path | None]:
    """An expert run's partition, its expert checkpoints and the general model it started from."""
    run_dir = Path(run_dir)
    partition = Partition.load(run_dir / "partition.json")
    stems = []
    for e in range(len(partition.experts)):
        stem = checkpoint_stem(run_dir / f"expert-{e}")
        if not stem.with_suffix(".json").is_file():
            raise ConfigError(f"{run_dir} has no trained expert {e}", fix="finish: askexpert train experts --resume")
        stems.append(stem)
    summary = run_dir / "experts.json"
    init = json.loads(summary.read_text()).get("init") if summary.is_file() else None
    return partition, stems, Path(init) if init else None


def load_experts(run_dir: Path, label: str, reference: Outputs, device: str = "auto") -> ExpertSet:
    """The experts of an expert run, checked against the reference's images, temperatures fitted on val."""
    partition, stems, _ = expert_run(run_dir)
    n = len(partition.class_names)
    vals, tests, temps = [], [], []
    for e, (subset, stem) in enumerate(zip(partition.experts, stems, strict=True)):
        out = outputs_of(stem, f"expert {e} of {label}", device)
        require_same_images(reference, out)
        temps.append(fit_temperature(out.val_logits, subset_targets(torch.from_numpy(out.val_labels), subset, n)))
        vals.append(out.val_logits)
        tests.append(out.test_logits)
    return ExpertSet(label, partition.experts, temps, ExpertAnswers.from_logits(vals, partition.experts, temps),
                     ExpertAnswers.from_logits(tests, partition.experts, temps), stems)


def general_as_expert(general: Outputs, temperature: float, num_classes: int) -> ExpertSet:
    everything = [list(range(num_classes))]
    return ExpertSet("general model as the expert", everything, [temperature],
                     ExpertAnswers.from_logits([general.val_logits], everything, [temperature]),
                     ExpertAnswers.from_logits([general.test_logits], everything, [temperature]), [general.checkpoint])


def general_restricted(general: Outputs, temperature: float, subsets: list[list[int]], label: str) -> ExpertSet:
    """The general model in each expert's place, its answer restricted to that expert's classes (never
    "other"): the control that shows what specialisation adds beyond restricting the output classes."""
    def answers(logits: np.ndarray) -> ExpertAnswers:
        return ExpertAnswers.from_logits([logits[:, subset] for subset in subsets], subsets,
                                         [temperature] * len(subsets))

    return ExpertSet(label, [list(s) for s in subsets], [temperature] * len(subsets), answers(general.val_logits),
                     answers(general.test_logits), [general.checkpoint] * len(subsets))


def scaled_confidence(logits: np.ndarray, temperature: float, confidence: str) -> np.ndarray:
    """The routing confidence of every row of ``logits`` at ``temperature``."""
    return confidence_scores(softmax(logits, temperature), confidence)


def validation_confidence(generalist: Outputs, temperature: float, confidence: str) -> np.ndarray:
    return scaled_confidence(generalist.val_logits, temperature, confidence)


def choose_tau(generalist: Outputs, experts: ExpertSet, *, temperature: float, k: int, confidence: str,
               fallback: str, offload: float | None = None, accuracy: float | None = None,
               tau: float | None = None) -> tuple[RoutingPolicy, OperatingPoint]:
    """The policy for one operating point, chosen on validation: a target offload share, a target
    accuracy (the least offloading that reaches it) or a given tau; with what it gives on validation."""
    if sum(v is not None for v in (offload, accuracy, tau)) != 1:
        raise ConfigError("choose exactly one operating point", fix="pass one of --offload, --accuracy or --tau")
    conf = validation_confidence(generalist, temperature, confidence)
    n = generalist.val_logits.shape[1]
    membership = experts.membership(n)
    if offload is not None:
        chosen, target, value = tau_for_offload(conf, offload), "offload", offload
    elif accuracy is not None:
        everything = RoutingPolicy(tau=ALL, k=k, temperature=temperature, confidence=confidence, fallback=fallback)
        d = route(generalist.val_logits, everything, membership)
        final, _ = finalize(d, *experts.val.for_route(d.expert), everything)
        chosen, _ = tau_for_accuracy(conf, d.local_pred == generalist.val_labels, final == generalist.val_labels,
                                     accuracy)
        target, value = "accuracy", accuracy
    else:
        chosen, target, value = float(tau), "tau", float(tau)
    policy = RoutingPolicy(tau=chosen, k=k, temperature=temperature, confidence=confidence, fallback=fallback)
    m = system_metrics(generalist.val_logits, generalist.val_labels, membership, experts.val, policy)
    return policy, OperatingPoint(target=target, value=value, val_offload_rate=m.offload_rate,
                                  val_accuracy=m.accuracy)


def generalist_policy(generalist: Path, *, offload_rate: float, k: int, confidence: str = "max-prob",
                      fallback: str = "other", tau: float | None = None, temperature: float | None = None,
                      device: str = "cpu") -> RoutingPolicy:
    """A routing policy from the generalist's validation split alone (temperature fitted and tau chosen
    for ``offload_rate``, each only when not given): what a run directory gets without a bundle."""
    if tau is None or temperature is None:
        gen = outputs_of(generalist, "the generalist", device)
        temperature = temperature if temperature is not None else fit_temperature(gen.val_logits, gen.val_labels)
        if tau is None:
            tau = tau_for_offload(validation_confidence(gen, temperature, confidence), offload_rate)
    return RoutingPolicy(tau=tau, k=k, temperature=temperature, confidence=confidence, fallback=fallback)


def curve_rates() -> list[float]:
    """The offload shares the operating curve is computed at: every 0.5% up to 10% (where a latency budget
    on a slow link lands), every 2% above."""
    return sorted({round(r, 4) for r in [i / 200 for i in range(21)] + [i / 50 for i in range(5, 51)]})


def one_image_bytes(spec: InputSpec, topk: int = 3) -> tuple[int, int]:
    """Bytes of one offloaded image: its request body (raw uint8) and the server's JSON answer (the
    protocol's own answer builder, with full-precision probabilities as the server sends them)."""
    ids = list(range(topk))
    p = [0.4123456789012345, 0.3123456789012345, 0.2123456789012345][:topk]
    result = {"pred": 0, "confidence": p[0], "other": False, "topk": ids, "probs": p}
    down = json.dumps(infer_response("0", [result], 0.0123456789012, 1.123456789012, 1), separators=(",", ":"))
    return spec.channels * spec.size * spec.size, len(down.encode())


def operating_curve(generalist: Outputs, experts: ExpertSet, *, temperature: float, ks: list[int],
                    confidence: str, fallback: str, spec: InputSpec) -> OperatingCurve:
    """The system on validation over a grid of tau (:func:`curve_rates`) for every k in ``ks``: offload
    rate, accuracy, accuracy on the offloaded images and each expert's share, as the bundle carries it."""
    conf = validation_confidence(generalist, temperature, confidence)
    n = generalist.val_logits.shape[1]
    membership = experts.membership(n)
    taus = sorted({tau_for_offload(conf, r) for r in curve_rates()})
    points = []
    for k in sorted(set(ks)):
        for tau in taus:
            policy = RoutingPolicy(tau=tau, k=k, temperature=temperature, confidence=confidence, fallback=fallback)
            m = system_metrics(generalist.val_logits, generalist.val_labels, membership, experts.val, policy)
            load = np.asarray(m.expert_load, dtype=np.float64)
            points.append(CurvePoint(
                tau=tau, k=k, offload_rate=m.offload_rate, accuracy=m.accuracy,
                offloaded_accuracy=None if m.offloaded == 0 else m.offloaded_accuracy_system,
                expert_share=(load / load.sum()).tolist() if load.sum() else [0.0] * len(load)))
    up, down = one_image_bytes(spec)
    return OperatingCurve(points=points, up_bytes=up, down_bytes=down)
