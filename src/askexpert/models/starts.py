"""Committed pretrained starts: weight files kept in the repository with a manifest, so that a start
costing an hour of CPU survives from one session (and machine) to the next.

    starts/<pool>/manifest.json                       every start: how it was made, what it reaches, sha256
    starts/<pool>/<model>.safetensors                 its weights, stored in float16 (restored to float32)
    starts/<pool>/partial/<model>-e<E>-lr<LR>-s<S>/   an unfinished start: the training state after its
                                                      last finished epoch (resumed by ``askexpert pretrain``)

The store is ``$ASKEXPERT_STARTS`` or the source checkout's ``starts/``. A start is read only through
:func:`restored_file`: the stored file's sha256 must be the manifest's and its tensors must fit the
architecture it names (keys and shapes); the float32 copy timm loads is written once to the user cache.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch

from askexpert.contract.bundle import sha256_file
from askexpert.errors import ModelError
from askexpert.paths import user_cache_dir

MANIFEST = "manifest.json"
STORED_DTYPE = torch.float16


def store_dir() -> Path:
    """Where committed starts live: ``$ASKEXPERT_STARTS``, else the source checkout's ``starts/``."""
    env = os.environ.get("ASKEXPERT_STARTS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "starts"


@dataclass(frozen=True)
class StartRecord:
    """One committed start: the manifest's entry (how to remake it, what it reaches, its hash)."""

    pool: str
    model: str  # the preset (or timm name) the weights belong to
    file: str  # relative to the pool's folder
    sha256: str  # of the stored file
    dtype: str  # the stored dtype; loading restores float32
    architecture: str  # sha256 of the tensors' names and shapes (the architecture check)
    num_classes: int  # the pool's classes (the head the file carries)
    parameters: int
    epochs: int
    lr: float
    seed: int
    val_top1: float  # the pool's validation split, with the float32 weights training ended with
    val_top5: float
    val_top1_stored: float | None  # the same, with the stored (rounded) weights
    seconds: float
    precision: str
    machine: str
    command: str
    made: str

    def path(self, root: Path | None = None) -> Path:
        return (root or store_dir()) / self.pool / self.file


def architecture_signature(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensor names and shapes: equal for two files of one architecture."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(f"{name}:{tuple(tensors[name].shape)};".encode())
    return digest.hexdigest()


def read_manifest(pool: str, root: Path | None = None) -> dict[str, StartRecord]:
    """The committed starts of ``pool`` by model (empty when there are none)."""
    path = (root or store_dir()) / pool / MANIFEST
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: StartRecord(**entry) for name, entry in data.get("starts", {}).items()}


def find_start(pool: str, model: str, root: Path | None = None) -> StartRecord | None:
    return read_manifest(pool, root).get(model)


def _write_manifest(pool: str, records: dict[str, StartRecord], root: Path) -> None:
    folder = root / pool
    folder.mkdir(parents=True, exist_ok=True)
    body = {"about": "pretrained starts committed with the code (askexpert.models.starts); remake one with its "
                     "command", "starts": {name: asdict(r) for name, r in sorted(records.items())}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


def expected_architecture(model: str, num_classes: int) -> str:
    """The signature of ``model`` built with ``num_classes`` outputs (what its start must match)."""
    from askexpert.config import ModelConfig
    from askexpert.models.factory import build_model, resolve_spec

    spec, _ = resolve_spec(ModelConfig(name=model, pretrained=False), num_classes=num_classes, mean=(0.5,),
                           std=(0.5,))
    return architecture_signature(build_model(spec).state_dict())


def restored_file(record: StartRecord, root: Path | None = None) -> Path:
    """The start's float32 weights file (written once to the user cache), after checking the stored file's
    sha256 against the manifest and its tensors against the architecture the manifest names."""
    path = record.path(root)
    remake = f"{record.command} --fresh"  # the manifest's own command, reusing nothing
    if not path.is_file():
        raise ModelError(f"the committed start {path} is missing",
                         fix=f"restore it (git checkout -- {path.name}) or remake it: {remake}")
    digest = sha256_file(path)
    if digest != record.sha256:
        raise ModelError(f"the committed start {path} has sha256 {digest[:12]}, its manifest says "
                         f"{record.sha256[:12]}: the file is corrupted or was replaced",
                         fix=f"restore it (git checkout -- {path}) or remake it: {remake}")
    out = user_cache_dir() / "starts" / record.pool / f"{record.model}-{record.sha256[:16]}.safetensors"
    if out.is_file():
        return out
    tensors = safetensors.torch.load_file(str(path))
    if architecture_signature(tensors) != record.architecture or \
            expected_architecture(record.model, record.num_classes) != record.architecture:
        raise ModelError(f"the committed start {path} does not fit {record.model} with {record.num_classes} "
                         "classes (its tensors' names or shapes differ)",
                         fix=f"name the model it was made for, or remake it: {remake}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # one writer's own: two processes may unpack it at once
    safetensors.torch.save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, out)
    return out


def stored_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """A float32 weights file as the store keeps it: floating tensors in :data:`STORED_DTYPE`."""
    tensors = safetensors.torch.load_file(str(weights))
    return {k: (v.to(STORED_DTYPE) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def commit_start(weights: Path, *, pool: str, model: str, root: Path | None = None, **fields) -> StartRecord:
    """Store a finished start's float32 ``weights`` (in float16) in the store and its manifest; ``fields``:
    the rest of :class:`StartRecord` (epochs, lr, seed, figures, command ...). Its partial state goes."""
    root = root or store_dir()
    tensors = stored_tensors(weights)
    folder = root / pool
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}.safetensors"
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(tensors, str(tmp))
    os.replace(tmp, path)
    head = next(k for k in sorted(tensors) if k.startswith("head.") and k.endswith(".weight"))
    record = StartRecord(pool=pool, model=model, file=path.name, sha256=sha256_file(path),
                         dtype=str(STORED_DTYPE).removeprefix("torch."),
                         architecture=architecture_signature(tensors), num_classes=int(tensors[head].shape[0]),
                         parameters=sum(v.numel() for v in tensors.values()),
                         made=_dt.date.today().isoformat(), **fields)
    records = read_manifest(pool, root)
    records[model] = record
    _write_manifest(pool, records, root)
    drop_partial(pool, model, record.epochs, record.lr, record.seed, root)
    return record


def partial_dir(pool: str, model: str, epochs: int, lr: float, seed: int, root: Path | None = None) -> Path:
    return (root or store_dir()) / pool / "partial" / f"{model}-e{epochs}-lr{lr:g}-s{seed}"


_PARTIAL_FILES = ("state.safetensors", "state.json", "metrics.jsonl", "train.log")


def commit_partial(run_dir: Path, pool: str, model: str, epochs: int, lr: float, seed: int,
                   root: Path | None = None) -> Path:
    """Keep an unfinished start's training state (after its last finished epoch) in the store."""
    out = partial_dir(pool, model, epochs, lr, seed, root)
    out.mkdir(parents=True, exist_ok=True)
    for name in _PARTIAL_FILES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    return out


def restore_partial(run_dir: Path, pool: str, model: str, epochs: int, lr: float, seed: int,
                    root: Path | None = None) -> int:
    """Copy a committed unfinished state into an empty ``run_dir`` to resume from; returns its epoch (0: none)."""
    src = partial_dir(pool, model, epochs, lr, seed, root)
    if not (src / "state.json").is_file() or (run_dir / "state.json").is_file():
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in _PARTIAL_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, run_dir / name)
    return int(json.loads((src / "state.json").read_text())["epoch"])


def drop_partial(pool: str, model: str, epochs: int, lr: float, seed: int, root: Path | None = None) -> None:
    shutil.rmtree(partial_dir(pool, model, epochs, lr, seed, root), ignore_errors=True)


def pool_of(dataset: str) -> str | None:
    """The pretraining pool of a task built with one (han100's), or None."""
    from askexpert.data.han import POOL, TASK

    return POOL if dataset == TASK else None


def committed_weights(model: str, dataset: str, root: Path | None = None) -> Path | None:
    """The checked float32 file of the committed start of ``model`` on ``dataset``'s pool, or None."""
    pool = pool_of(dataset)
    record = find_start(pool, model, root) if pool else None
    return restored_file(record, root) if record is not None else None
