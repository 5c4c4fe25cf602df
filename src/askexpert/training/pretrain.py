"""A pretrained start made offline: supervised training of one architecture on a disjoint pool of
classes (``han100-pool``: 1,000 characters the task does not hold, drawn in the task's training fonts),
the role ImageNet plays for CIFAR-100.

    askexpert pretrain vit-mini-expert-32g                      # a committed start is reused as it is
    askexpert pretrain vit-mini-expert-32g --commit --budget-min 150   # train (resumably), keep it in starts/

A start that costs an hour is **committed** with the code (:mod:`askexpert.models.starts`: float16
weights, a manifest with the command, seed, epochs, pool accuracy and sha256), so a new session on a
new machine starts from it instead of paying again. Before training, ``pretrain`` looks for (1) a
committed start of the same model, epochs, lr and seed, (2) a finished run in the cache, (3) an
unfinished committed state to resume from. ``budget_min`` stops training at an epoch boundary before
the budget runs out; with ``commit`` that state is committed, and the next session resumes it.

The result is an ordinary weights file, what ``model.pretrained_file`` (and ``experts.init_from:
pretrained``) reads: timm loads its weights and replaces its 1,000-class head by a fresh one of the
task's classes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from askexpert.config import load_run_config
from askexpert.data import load_dataset
from askexpert.data.han import POOL
from askexpert.devices import cpu_model, resolve_device
from askexpert.errors import ConfigError
from askexpert.models import load_checkpoint
from askexpert.models.starts import (
    StartRecord,
    commit_partial,
    commit_start,
    find_start,
    restore_partial,
    restored_file,
    stored_tensors,
)
from askexpert.paths import user_cache_dir
from askexpert.training.evaluate import accuracy, predict_logits
from askexpert.training.generalist import train_generalist

DEFAULT_EPOCHS = 20  # on han100-pool: 5 epochs left the medium model at 4% top-1 (the lr decayed on the plateau)


@dataclass(frozen=True)
class Pretrained:
    """A pretrained start: its weights file, its run and what it reaches on the pool's validation split.
    ``weights`` is None while the start is unfinished (stopped at its budget: ``stopped_after`` epochs)."""

    weights: Path | None
    run_dir: Path
    pool: str
    model: str
    epochs: int
    val_top1: float
    val_top5: float
    seconds: float
    reused: bool
    committed: StartRecord | None = None  # the committed start it is (reused or just committed)
    stopped_after: int | None = None


def default_dir(pool: str, model: str, epochs: int, seed: int, lr: float) -> Path:
    return user_cache_dir() / "pretrained" / pool / f"{model}-e{epochs}-lr{lr:g}-s{seed}"


def command(model: str, pool: str, epochs: int, lr: float, seed: int) -> str:
    return f"askexpert pretrain {model} --pool {pool} --epochs {epochs} --lr {lr:g} --seed {seed} --commit"


def _matches(record: StartRecord | None, epochs: int, lr: float, seed: int) -> bool:
    return record is not None and (record.epochs, record.lr, record.seed) == (epochs, lr, seed)


def _stored_accuracy(checkpoint: Path, pool_cfg) -> float:
    """Top-1 (%) on the pool's validation split of the checkpoint's model with its weights rounded as stored."""
    ckpt = load_checkpoint(checkpoint)
    rounded = stored_tensors(checkpoint.with_suffix(".safetensors"))
    ckpt.model.load_state_dict({k: v.float() for k, v in rounded.items()})
    spec = ckpt.meta.model
    splits = load_dataset(pool_cfg.data, image_size=spec.input.size, channels=spec.input.channels)
    logits = predict_logits(ckpt.model, splits.val, spec.input, batch_size=pool_cfg.train.eval_batch_size,
                            device=resolve_device(pool_cfg.train.device))
    return accuracy(logits, splits.val.labels)


def pretrain(model: str, *, pool: str = POOL, epochs: int = DEFAULT_EPOCHS, lr: float = 1e-3, seed: int = 0,
             out: Path | None = None, overrides: list[str] | None = None, console: Console | None = None,
             fresh: bool = False, commit: bool = False, budget_min: float | None = None,
             store: Path | None = None) -> Pretrained:
    """Train ``model`` on every class of ``pool`` (or reuse a committed start or a finished run) and return its
    weights file. ``fresh``: neither reuse nor resume anything. ``commit``: keep the result in the store
    (the start when finished, its training state when ``budget_min`` stopped it). ``store``: the starts'
    folder (default :func:`askexpert.models.starts.store_dir`)."""
    if budget_min is not None and budget_min <= 0:
        raise ConfigError(f"a budget of {budget_min:g} minutes trains nothing",
                          fix="give --budget-min a positive number of minutes, or leave it out")
    record = None if fresh else find_start(pool, model, store)
    if out is None and _matches(record, epochs, lr, seed):
        return Pretrained(restored_file(record, store), default_dir(pool, model, epochs, seed, lr), pool, model,
                          epochs, record.val_top1, record.val_top5, record.seconds, True, record)
    run_dir = Path(out) if out is not None else default_dir(pool, model, epochs, seed, lr)
    done = (run_dir / "metrics.json").is_file() and not fresh
    resumed = 0 if done or fresh else restore_partial(run_dir, pool, model, epochs, lr, seed, store)
    if resumed and console is not None:
        console.log(f"resuming the committed unfinished start of {model} after epoch {resumed}/{epochs}")
    cfg = load_run_config(None, [f"name={run_dir.name}", f"output_dir={run_dir.parent}", f"data.name={pool}",
                                 f"model.name={model}", f"train.epochs={epochs}", f"train.lr={lr}",
                                 f"train.seed={seed}", "train.warmup_fraction=0.05", *(overrides or [])])
    deadline = time.monotonic() + budget_min * 60 if budget_min is not None else None
    trained = train_generalist(cfg, resume=not fresh, overwrite=fresh, console=console, kind="pretrained",
                               deadline=deadline)
    if trained.checkpoint is None:  # stopped at its budget: unfinished
        if commit:
            where = commit_partial(run_dir, pool, model, epochs, lr, seed, store)
            if console is not None:
                console.log(f"unfinished start committed in {where}: rerun the same command to go on")
        return Pretrained(None, run_dir, pool, model, epochs, float("nan"), float("nan"), 0.0, False,
                          stopped_after=trained.metrics["stopped_after"])
    metrics = trained.metrics
    weights = trained.checkpoint.with_suffix(".safetensors")
    seconds = sum(json.loads(line).get("train_seconds", 0.0)
                  for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip())
    summary = {"pool": pool, "model": model, "epochs": epochs, "lr": lr, "seed": seed, "weights": str(weights),
               "val_top1": metrics["val"]["top1"], "val_top5": metrics["val"].get("top5"),
               "seconds": seconds or metrics["train"]["seconds"], "images_per_s": metrics["train"]["images_per_s"],
               "precision": metrics["train"]["precision"]}
    (run_dir / "pretrained.json").write_text(json.dumps(summary, indent=1))
    committed = None
    if commit:
        committed = commit_start(weights, pool=pool, model=model, root=store, epochs=epochs, lr=lr, seed=seed,
                                 val_top1=summary["val_top1"], val_top5=summary["val_top5"] or 0.0,
                                 val_top1_stored=_stored_accuracy(trained.checkpoint, cfg),
                                 seconds=summary["seconds"], precision=summary["precision"],
                                 machine=f"{cpu_model()}, torch {torch.get_num_threads()} threads",
                                 command=command(model, pool, epochs, lr, seed))
    return Pretrained(weights, run_dir, pool, model, epochs, summary["val_top1"], summary["val_top5"] or 0.0,
                      summary["seconds"], done, committed)
