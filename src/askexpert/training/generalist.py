"""Train a classifier over every class of a dataset: the edge generalist (small model), or the
general medium model that the experts start from (and the "everything offloaded" baseline)."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from askexpert.config import RunConfig
from askexpert.console import stderr_console
from askexpert.data import DatasetSplits, load_dataset
from askexpert.data.base import DatasetRecord
from askexpert.devices import resolve_device
from askexpert.models import (
    ModelSpec,
    build_model,
    count_parameters,
    flops_per_image,
    load_checkpoint,
    resolve_spec,
    save_checkpoint,
)
from askexpert.models.checkpoint import checkpoint_stem
from askexpert.models.starts import committed_weights
from askexpert.training.engine import fit
from askexpert.training.evaluate import classification_metrics, predict_logits, write_report
from askexpert.training.plans import SplitPlan
from askexpert.training.rundir import prepare_run_dir


@dataclass
class TrainedModel:
    run_dir: Path
    checkpoint: Path | None  # None: stopped at a deadline, unfinished
    metrics: dict


def load_for_model(cfg: RunConfig) -> tuple[DatasetSplits, ModelSpec, bool]:
    """The dataset and the full model spec of a run (an image folder is decoded at the model's size)."""
    if cfg.model.pretrained and not cfg.model.pretrained_file:  # the task's committed start, where it has one
        file = committed_weights(cfg.model.name, cfg.data.name)
        if file is not None:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_file": str(file)})})
    probe, _ = resolve_spec(cfg.model, num_classes=2, mean=(0.5,), std=(0.5,))
    splits = load_dataset(cfg.data, image_size=probe.input.size, channels=probe.input.channels)
    spec, pretrained = resolve_spec(cfg.model, num_classes=splits.num_classes, mean=splits.mean, std=splits.std)
    return splits, spec, pretrained


def dataset_record(cfg: RunConfig, splits: DatasetSplits) -> DatasetRecord:
    return splits.record(cfg.data.model_dump(mode="json"))


def evaluate_split(model: torch.nn.Module, spec: ModelSpec, splits: DatasetSplits, split: str, *,
                   class_names: list[str], device: torch.device, batch_size: int,
                   out_dir: Path | None = None, title: str = "") -> dict:
    """Metrics of ``model`` on one split; with ``out_dir``, also ``<split>.json`` and a confusion PNG."""
    data = splits.split(split)
    logits = predict_logits(model, data, spec.input, batch_size=batch_size, device=device)
    metrics = classification_metrics(logits, data.labels, class_names)
    if out_dir is not None:
        write_report(metrics, class_names, out_dir, split, f"{title} on {splits.name} {split}")
    return metrics


def train_generalist(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
                     console: Console | None = None, kind: str = "generalist",
                     deadline: float | None = None) -> TrainedModel:
    """Train the all-class model of ``cfg`` into ``cfg.run_dir`` and report validation and test metrics.

    ``kind`` is recorded in the checkpoint: ``generalist`` (edge) or ``general`` (the medium model).
    The test split is evaluated once, after training, and only reported: no choice depends on it.
    ``deadline`` (``time.monotonic()``): stop at an epoch boundary before it (:func:`~.engine.fit`); the run is
    then unfinished (``checkpoint`` None, ``metrics`` ``{"stopped_after": epoch}``) and resumes where it stopped.
    """
    console = console or stderr_console()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    stem = checkpoint_stem(run_dir)
    if resume and stem.with_suffix(".json").is_file():
        ckpt = load_checkpoint(stem)
        console.log(f"{run_dir} is already complete: {ckpt.meta.metrics.get('test', {}).get('top1')}% test top-1")
        return TrainedModel(run_dir, stem, ckpt.meta.metrics)

    splits, spec, pretrained = load_for_model(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(spec, pretrained=pretrained)
    n_params, flops = count_parameters(model), flops_per_image(model, spec)
    console.log(f"{splits.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
                f"images from {splits.source}")
    console.log(f"model {spec.name} ({spec.timm_name}): {n_params / 1e6:.2f}M parameters, "
                f"{flops / 1e6:.1f} MFLOPs per image, input {spec.input.channels}x{spec.input.size}^2"
                + (f"; starting from {spec.pretrained_source}" if pretrained else ""))
    augment, why = splits.augment_for(cfg.train.augment)
    console.log(f"augmentation {augment}: {why}")
    plan = SplitPlan(splits.train, cfg.train.batch_size, cfg.train.epochs, cfg.train.num_workers)
    result = fit(model, plan=plan, val=splits.val, spec=spec.input, cfg=cfg.train, augment=augment,
                 run_dir=run_dir, resume=resume, console=console, label=kind, deadline=deadline)
    if result.stopped_after is not None:
        return TrainedModel(run_dir, None, {"stopped_after": result.stopped_after})

    device = resolve_device(cfg.train.device)
    metrics = {}
    for split in ("val", "test"):
        m = evaluate_split(model, spec, splits, split, class_names=splits.class_names, device=device,
                           batch_size=cfg.train.eval_batch_size, out_dir=run_dir / "eval", title=spec.name)
        metrics[split] = {k: v for k, v in m.items() if k not in ("per_class", "confusion")}
    metrics["train"] = {
        "epochs": cfg.train.epochs, "images_per_s": result.images_per_second, "seconds": result.seconds,
        "device": str(device), "precision": result.precision, "threads": torch.get_num_threads(),
        "host": platform.node(),
        "final_train_acc": result.history[-1].train_acc if result.history else None,
    }
    metrics["model"] = {"parameters": n_params, "flops_per_image": flops}
    save_checkpoint(stem, model, spec=spec, kind=kind, class_names=splits.class_names,
                    dataset=dataset_record(cfg, splits), training=cfg.model_dump(mode="json"), metrics=metrics)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    console.log(f"test top-1 {metrics['test']['top1']:.2f}% (val {metrics['val']['top1']:.2f}%); "
                f"checkpoint {stem}.safetensors")
    return TrainedModel(run_dir, stem, metrics)
