"""Screen the han100 task before using it (validation only): does it leave specialists room?

    python benchmarks/screen_han.py                 # ~75 min on 2 cores (bf16): four models from scratch
    python benchmarks/screen_han.py --summary       # the figures from the finished runs

Four models, each trained from random weights on all 100 classes with one recipe (AdamW, cosine, 15
epochs, batch 128, the task's default augmentation): the edge generalists ``vit-micro-edge-32g`` (d32 x
4) and ``vit-mini-edge-32g`` (d64 x 4), the medium model ``vit-mini-expert-32g`` (d128 x 4) and a model
four times its size, ``vit-mini-large-32g`` (d256 x 4). The confusion partition (4 experts x 25
classes) comes from the d64 generalist's validation confusion, as the experiment's will. Three tests,
every figure on validation:

- (a) headroom: the large model beats the medium one by at least 3 points on the partition's subsets
  (each subset's images, the answer restricted to its 25 classes), so capacity matters there;
- (b) not saturated: the medium model under 85%;
- (c) the generalist at least 10 points under the medium model.

Writes ``results/han100/screen.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from askexpert.config import load_run_config
from askexpert.models import open_checkpoint
from askexpert.training.generalist import train_generalist
from askexpert.training.logits import cached_logits
from askexpert.training.partition import partition_from_confusion
from askexpert_lab.bench.machine import describe, machine_info

RESULTS = Path(__file__).parents[1] / "results" / "han100"
MODELS = {  # run name -> (preset, peak lr)
    "edge-d32x4": ("vit-micro-edge-32g", 2e-3),
    "edge-d64x4": ("vit-mini-edge-32g", 2e-3),
    "medium-d128x4": ("vit-mini-expert-32g", 1e-3),
    "large-d256x4": ("vit-mini-large-32g", 1e-3),
}


def train(name: str, preset: str, lr: float, epochs: int, out: Path, extra: list[str]) -> Path:
    cfg = load_run_config(None, [f"name={name}", f"output_dir={out}", "data.name=han100", f"model.name={preset}",
                                 f"train.epochs={epochs}", f"train.lr={lr}", "train.warmup_fraction=0.05",
                                 "train.batch_size=128", *extra])
    return train_generalist(cfg, resume=True).checkpoint


def restricted_subset_accuracy(logits: torch.Tensor, labels: torch.Tensor, subsets: list[list[int]]) -> list[float]:
    """Per subset: accuracy on its images with the answer restricted to its classes."""
    out = []
    for subset in subsets:
        s = torch.tensor(subset)
        mask = torch.isin(labels, s)
        pred = s[logits[mask][:, s].argmax(1)]
        out.append(100.0 * float((pred == labels[mask]).float().mean()))
    return out


def summarise(out: Path, epochs: int) -> dict:
    val = {name: cached_logits(open_checkpoint(out / name), "val") for name in MODELS
           if (out / name / "metrics.json").is_file()}
    acc = {name: 100.0 * float((z.argmax(1) == y).float().mean()) for name, (z, y) in val.items()}
    report: dict = {"epochs": epochs, "val_top1": acc, "test_top1": {
        name: json.loads((out / name / "metrics.json").read_text())["test"]["top1"] for name in val}}
    if "edge-d64x4" in val:
        z, y = val["edge-d64x4"]
        n = z.shape[1]
        confusion = torch.bincount(y * n + z.argmax(1), minlength=n * n).reshape(n, n)
        part = partition_from_confusion(confusion, [str(i) for i in range(n)], 4, max_size=25, min_size=25)
        report["partition"] = part.experts
        report["subset_val"] = {name: restricted_subset_accuracy(z_, y_, part.experts)
                                for name, (z_, y_) in val.items()}
    sub = {k: statistics.mean(v) for k, v in report.get("subset_val", {}).items()}
    report["subset_val_mean"] = sub
    checks = {}
    if {"large-d256x4", "medium-d128x4"} <= sub.keys():
        d = sub["large-d256x4"] - sub["medium-d128x4"]
        checks["a_headroom_large_minus_medium_subsets"] = {"value": d, "goal": ">= 3", "met": d >= 3}
    if "medium-d128x4" in acc:
        checks["b_medium_val_top1"] = {"value": acc["medium-d128x4"], "goal": "< 85", "met": acc["medium-d128x4"] < 85}
    for edge in ("edge-d64x4", "edge-d32x4"):
        if edge in acc and "medium-d128x4" in acc:
            d = acc["medium-d128x4"] - acc[edge]
            checks[f"c_medium_minus_{edge}"] = {"value": d, "goal": ">= 10", "met": d >= 10}
    report["checks"] = checks
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--output-dir", type=Path, default=Path("runs/han-screen"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--set", action="append", default=[], help="an override for every run (e.g. data.root=...)")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.summary:
        for name in args.models:
            preset, lr = MODELS[name]
            train(name, preset, lr, args.epochs, args.output_dir, args.set)
    report = summarise(args.output_dir, args.epochs)
    report.update(machine=machine_info(), command="python benchmarks/screen_han.py " + " ".join(sys.argv[1:]))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "screen.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("val_top1", "subset_val_mean", "checks")}, indent=1))
    print(describe(report["machine"]))


if __name__ == "__main__":
    main()
