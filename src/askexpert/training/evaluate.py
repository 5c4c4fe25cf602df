"""Predictions and classification metrics over a split: top-1, top-5, per-class accuracy, confusion; an
expert's figures over its subset and "other"."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from askexpert.data import ImageSplit, InputSpec, iter_batches, to_model_input


def percent(hits: torch.Tensor) -> float:
    """The share (%) of true entries of a boolean tensor; 0.0 when it is empty."""
    return 100.0 * float(hits.float().mean()) if hits.numel() else 0.0


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of ``logits [N, C]`` against ``labels [N]``: the one accuracy of the training side."""
    return percent(logits.argmax(1) == labels)


def subset_targets(labels: torch.Tensor, subset: list[int], num_classes: int) -> torch.Tensor:
    """Map dataset labels to an expert's outputs: position in ``subset``, or ``len(subset)`` ("other")."""
    table = torch.full((num_classes,), len(subset), dtype=torch.int64)
    table[torch.tensor(subset)] = torch.arange(len(subset))
    return table[labels]


@dataclass(frozen=True)
class SubsetMetrics:
    """An expert's accuracy on the images of its subset and its recall of "other" on the rest (%).

    ``subset_accuracy`` charges an "other" answer to a subset image as an error (what the system meets:
    there the generalist's answer stands); ``subset_accuracy_no_other`` is the argmax over the subset's
    outputs alone, the figure to hold against a model that cannot say "other" (the general model
    restricted to the subset)."""

    subset_accuracy: float
    subset_samples: int
    other_recall: float | None  # None: no image from outside the subset
    other_samples: int
    subset_accuracy_no_other: float | None = None  # None: a run measured before it was recorded

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SubsetMetrics:
        return cls(**{k: d[k] for k in ("subset_accuracy", "subset_samples", "other_recall", "other_samples")},
                   subset_accuracy_no_other=d.get("subset_accuracy_no_other"))


def subset_metrics(logits: torch.Tensor, targets: torch.Tensor, subset_size: int) -> SubsetMetrics:
    """An expert's :class:`SubsetMetrics` from its logits and :func:`subset_targets`."""
    pred = logits.argmax(1)
    inside = targets < subset_size
    outside = ~inside
    no_other = logits[inside][:, :subset_size].argmax(1)
    return SubsetMetrics(percent(pred[inside] == targets[inside]), int(inside.sum()),
                         percent(pred[outside] == subset_size) if outside.any() else None, int(outside.sum()),
                         percent(no_other == targets[inside]))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, split: ImageSplit, spec: InputSpec, *, batch_size: int = 512,
                   device: torch.device | str = "cpu", num_workers: int = 0, progress=None) -> torch.Tensor:
    """Float32 logits ``[N, num_outputs]`` of ``model`` on every image of ``split``, in order."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = []
    task = progress.add_task("predict", total=len(split), info="") if progress is not None else None
    for images, _ in iter_batches(split, batch_size, num_workers=num_workers):
        x = to_model_input(images.to(device, non_blocking=True), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        out.append(logits.float().cpu())
        if task is not None:
            progress.advance(task, len(images))
    if task is not None:
        progress.remove_task(task)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """Top-1 / top-5 accuracy (%), mean NLL, per-class accuracy and the confusion matrix (rows: truth)."""
    labels = labels.to(torch.int64)
    n_cls = len(class_names)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    confusion = torch.bincount(labels * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    support = confusion.sum(1)
    per_class = [
        {"class": name, "accuracy": 100.0 * float(confusion[i, i]) / max(1, int(support[i])),
         "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    return {
        "samples": len(labels),
        "top1": percent(pred == labels),
        f"top{k}": percent((topk == labels[:, None]).any(1)),
        "nll": float(F.cross_entropy(logits, labels)) if len(labels) else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def save_confusion_plot(confusion: list[list[int]], class_names: list[str], path: Path, title: str) -> Path:
    """A row-normalised confusion matrix as a PNG heat map, counts printed in each cell (<= 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(class_names)
    side = min(max(5.0, 0.45 * n + 2), 14.0)  # capped: 1,000 classes at 0.45 in a class would need ~12 GB
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(metrics: dict, class_names: list[str], out_dir: Path, split: str, title: str) -> None:
    """``out_dir/<split>.json`` with every metric, and ``out_dir/<split>-confusion.png``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{split}.json").write_text(json.dumps(metrics, indent=1))
    save_confusion_plot(metrics["confusion"], class_names, out_dir / f"{split}-confusion.png",
                        f"{title} (top-1 {metrics['top1']:.2f}%)")


class EvalReport:
    """What ``evaluate_checkpoint`` measured and where it wrote it. For an expert, ``metrics`` is over its
    outputs (its classes plus "other", every image of the split counted) and ``expert`` adds its subset
    accuracy and "other" recall."""

    def __init__(self, model_name: str, dataset: str, metrics: dict, out_dir: Path,
                 expert: dict | None = None) -> None:
        self.model_name, self.dataset, self.metrics, self.out_dir = model_name, dataset, metrics, out_dir
        self.expert = expert

    @property
    def top5(self) -> float:
        return next(v for k, v in self.metrics.items() if k.startswith("top") and k != "top1")


def evaluate_checkpoint(checkpoint, *, split: str = "test", data: str | None = None, data_root=None,
                        out_dir: Path | None = None, device: str = "auto", batch_size: int = 512,
                        save_logits: bool = False, console=None) -> EvalReport:
    """Evaluate a saved model on a split of its own dataset (or ``data``, with the same classes)."""
    import safetensors.torch

    from askexpert.config import DataConfig
    from askexpert.console import progress_bar
    from askexpert.data import load_dataset
    from askexpert.devices import resolve_device
    from askexpert.errors import DatasetError
    from askexpert.models import load_checkpoint

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, device=dev)
    meta = ckpt.meta
    data_cfg = DataConfig(**meta.dataset.config)
    if data is not None:
        data_cfg = data_cfg.model_copy(update={"name": data})
    if data_root is not None:
        data_cfg = data_cfg.model_copy(update={"root": data_root})
    splits = load_dataset(data_cfg, image_size=meta.model.input.size, channels=meta.model.input.channels)
    subset = meta.extra.get("subset") if meta.kind == "expert" else None
    trained_on = (meta.dataset.class_names or meta.class_names) if subset is not None else meta.class_names
    if splits.class_names != trained_on:
        raise DatasetError(
            f"{splits.name} has classes {splits.class_names[:4]}... but the model was trained on "
            f"{trained_on[:4]}...",
            fix="evaluate on a dataset with the model's classes, in the same order (leave out --data to use "
            "the model's own)",
        )
    target = splits.split(split)
    with progress_bar(console, transient=True) as progress:
        logits = predict_logits(ckpt.model, target, meta.model.input, batch_size=batch_size, device=dev,
                                progress=progress)
    labels, expert = target.labels, None
    if subset is not None:  # an expert: its classes, every other image as "other"
        labels = subset_targets(target.labels, subset, splits.num_classes)
        expert = {"expert": meta.extra.get("expert_id"), "classes": meta.class_names[:-1],
                  **subset_metrics(logits, labels, len(subset)).to_json()}
    metrics = classification_metrics(logits, labels, meta.class_names)
    if expert is not None:
        metrics["expert"] = expert
    out_dir = Path(out_dir) if out_dir is not None else ckpt.path.parent / "eval"
    write_report(metrics, meta.class_names, out_dir, split, f"{meta.model.name} on {splits.name} {split}")
    if save_logits:
        safetensors.torch.save_file({"logits": logits.contiguous(), "labels": labels.contiguous()},
                                    str(out_dir / f"{split}-logits.safetensors"))
    return EvalReport(meta.model.name, splits.name, metrics, out_dir, expert)

