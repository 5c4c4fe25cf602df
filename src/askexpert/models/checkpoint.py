"""Checkpoints: weights in safetensors plus a JSON file of metadata; never pickled.

A checkpoint ``STEM`` is two files, ``STEM.safetensors`` and ``STEM.json``. The JSON holds the model
spec (so the model is rebuilt from the files alone), class names, input normalisation, dataset,
training config, metrics and the sha256 of the weights file, which is checked on every load.
Both files are written to temporary names and renamed, so an interrupted save never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import askexpert
from askexpert.contract.bundle import sha256_file
from askexpert.data.base import DatasetRecord
from askexpert.errors import CheckpointError
from askexpert.models.factory import ModelSpec, build_model, count_parameters
from askexpert.security import confined

FORMAT = "askexpert-checkpoint"
FORMAT_VERSION = 1


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["askexpert-checkpoint"] = FORMAT
    format_version: int = FORMAT_VERSION
    kind: str = Field(description="generalist, general, expert, ...")
    model: ModelSpec
    class_names: list[str] = Field(description="names of the model's outputs, in order")
    dataset: DatasetRecord = Field(default_factory=DatasetRecord)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    parameters: int
    weights_file: str
    weights_sha256: str
    created: str
    versions: dict[str, str] = Field(default_factory=dict)


@dataclass
class Checkpoint:
    model: torch.nn.Module
    meta: CheckpointMeta
    path: Path  # the STEM (no suffix)

    @property
    def stored(self) -> StoredCheckpoint:
        """The checkpoint on disk this model was loaded from, its metadata as read then."""
        return StoredCheckpoint(self.path, self.meta)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint on disk with its metadata read once (:func:`open_checkpoint`): what the steps of a build
    pass each other, so that none of them reads the same metadata again."""

    stem: Path
    meta: CheckpointMeta


def open_checkpoint(path: str | os.PathLike | StoredCheckpoint) -> StoredCheckpoint:
    """The checkpoint at ``path`` (a run directory, a stem, or either file), its metadata read and validated;
    one already open is returned as it is."""
    if isinstance(path, StoredCheckpoint):
        return path
    stem = checkpoint_stem(path)
    return StoredCheckpoint(stem, read_meta(stem))


def checkpoint_stem(path: str | os.PathLike) -> Path:
    """``run_dir`` -> ``run_dir/model``; ``x.safetensors`` or ``x.json`` -> ``x``."""
    p = Path(path)
    if p.is_dir():
        return p / "model"
    if p.suffix in (".safetensors", ".json"):
        return p.with_suffix("")
    return p


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, *, spec: ModelSpec, kind: str,
                    class_names: list[str], dataset: DatasetRecord | dict | None = None, training: dict | None = None,
                    metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``STEM.safetensors`` and ``STEM.json``; returns the stem."""
    stem = checkpoint_stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(".safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda p: safetensors.torch.save_file(state, str(p), metadata={"format": FORMAT}))
    meta = CheckpointMeta(
        kind=kind, model=spec, class_names=list(class_names), dataset=dataset or DatasetRecord(),
        training=training or {}, metrics=metrics or {}, extra=extra or {},
        parameters=count_parameters(model), weights_file=weights.name,
        weights_sha256=sha256_file(weights),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions={"askexpert": askexpert.__version__, "torch": torch.__version__, "timm": timm.__version__},
    )
    text = json.dumps(meta.model_dump(mode="json"), indent=2)
    _atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(text + "\n"))
    return stem


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read and validate a checkpoint's JSON metadata (the weights are not touched)."""
    stem = checkpoint_stem(path)
    meta_path = stem.with_suffix(".json")
    if not meta_path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path} (expected {meta_path} and {stem.with_suffix('.safetensors')})",
            fix="pass a checkpoint written by askexpert (a run directory or its model.json)",
        )
    try:
        data = json.loads(meta_path.read_text())
        return CheckpointMeta.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON ({err})",
                              fix="restore the file or retrain the model") from err
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(
            f"{meta_path} is not askexpert checkpoint metadata ({where}: {first['msg']})",
            fix="restore the file or retrain the model",
        ) from err


def load_checkpoint(path: str | os.PathLike | StoredCheckpoint, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint and load its weights, after checking their sha256."""
    stored = open_checkpoint(path)
    stem, meta = stored.stem, stored.meta
    weights = confined(stem.parent, meta.weights_file, f"checkpoint metadata {stem.with_suffix('.json')}")
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} are missing",
                              fix="copy the .safetensors file next to its .json")
    digest = sha256_file(weights)
    if digest != meta.weights_sha256:
        raise CheckpointError(
            f"checkpoint weights {weights} are corrupted (sha256 {digest[:12]}... but the metadata "
            f"records {meta.weights_sha256[:12]}...)",
            fix="restore the file from a copy or retrain the model",
        )
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError for malformed headers
        raise CheckpointError(f"cannot read checkpoint weights {weights}: {err}",
                              fix="restore the file from a copy or retrain the model") from err
    model = build_model(meta.model, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"weights in {weights} do not fit the model {meta.model.timm_name} "
            f"({str(err).splitlines()[0]})",
            fix="the .json and .safetensors files belong to different checkpoints; restore the pair",
        ) from err
    return Checkpoint(model=model.to(device).eval(), meta=meta, path=stem)
