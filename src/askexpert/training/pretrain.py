"""A pretrained start made offline: supervised training of one architecture on a disjoint pool of
classes (``han100-pool``: 1,000 characters the task does not hold, drawn in the task's training fonts),
the role ImageNet plays for CIFAR-100.

    askexpert pretrain vit-mini-expert-32g           # cached: a second call returns the same file

The result is an ordinary checkpoint whose ``.safetensors`` file is what ``model.pretrained_file`` (and
``experts.init_from: pretrained``) reads: timm loads its weights and replaces its 1,000-class head by a
fresh one of the task's classes. Its accuracy on the pool's validation split (the validation fonts)
is recorded beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from askexpert.config import load_run_config
from askexpert.data.han import POOL
from askexpert.paths import user_cache_dir
from askexpert.training.generalist import train_generalist

DEFAULT_EPOCHS = 20  # on han100-pool: 5 epochs left the medium model at 4% top-1 (the lr decayed on the plateau)


@dataclass(frozen=True)
class Pretrained:
    """A pretrained start: its weights file, its run and what it reaches on the pool's validation split."""

    weights: Path
    run_dir: Path
    pool: str
    model: str
    epochs: int
    val_top1: float
    val_top5: float
    seconds: float
    reused: bool


def default_dir(pool: str, model: str, epochs: int, seed: int, lr: float) -> Path:
    return user_cache_dir() / "pretrained" / pool / f"{model}-e{epochs}-lr{lr:g}-s{seed}"


def pretrain(model: str, *, pool: str = POOL, epochs: int = DEFAULT_EPOCHS, lr: float = 1e-3, seed: int = 0,
             out: Path | None = None, overrides: list[str] | None = None, console: Console | None = None) -> Pretrained:
    """Train ``model`` on every class of ``pool`` (or reuse the finished run) and return its weights file."""
    run_dir = Path(out) if out is not None else default_dir(pool, model, epochs, seed, lr)
    done = (run_dir / "metrics.json").is_file()
    cfg = load_run_config(None, [f"name={run_dir.name}", f"output_dir={run_dir.parent}", f"data.name={pool}",
                                 f"model.name={model}", f"train.epochs={epochs}", f"train.lr={lr}",
                                 f"train.seed={seed}", "train.warmup_fraction=0.05", *(overrides or [])])
    trained = train_generalist(cfg, resume=True, console=console, kind="pretrained")
    metrics = trained.metrics
    summary = {"pool": pool, "model": model, "epochs": epochs, "lr": lr, "seed": seed,
               "weights": str(trained.checkpoint.with_suffix(".safetensors")),
               "val_top1": metrics["val"]["top1"], "val_top5": metrics["val"].get("top5"),
               "seconds": metrics["train"]["seconds"], "images_per_s": metrics["train"]["images_per_s"],
               "precision": metrics["train"]["precision"]}
    (run_dir / "pretrained.json").write_text(json.dumps(summary, indent=1))
    return Pretrained(trained.checkpoint.with_suffix(".safetensors"), run_dir, pool, model, epochs,
                      summary["val_top1"], summary["val_top5"] or 0.0, summary["seconds"], done)
