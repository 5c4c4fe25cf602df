"""Benchmark: a small image folder of a user's, trained through the real code path: which augmentation
``augment: auto`` should mean, and how many epochs a small set needs.

    python benchmarks/imagefolder_small.py                 # both folders, both studies, seeds 0 1
    python benchmarks/imagefolder_small.py --data digits --study augment --seeds 0

Two real data sets are written as PNG image folders (one sub-folder per class, like a user's):

* ``fmnist``: 140 Fashion-MNIST training images a class (1,400; 28x28 grayscale) with 100 test images
  a class from its test split (offline, from the Debian package);
* ``digits``: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 28x28 PNGs; a flat folder,
  20% held out for test): a domain where a mirrored image changes its class (needs scikit-learn).

Study ``augment``: the edge generalist (vit-edge-28) with each augmentation at 5 and 15 epochs.
Study ``budget``: the generalist and the general model (vit-expert-28) with ``augment: auto`` at 4, 10
and 20 epochs: where the near-edge model overtakes the edge one. Writes results/<date>-
<host>-imagefolder-small-<data>-<study>-seeds<S>.json and prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from askexpert.config import load_run_config
from askexpert.console import stderr_console
from askexpert.data import fashion_mnist
from askexpert.training import train_generalist
from askexpert_lab.bench.machine import describe, machine_info

AUGMENTS = ("none", "crop", "crop-flip", "rrc-flip")


def write_fmnist(root: Path, per_class: int = 140, test_per_class: int = 100) -> Path:
    source = fashion_mnist.locate(None, allow_download=False)
    for split, n in (("train", per_class), ("test", test_per_class)):
        images, labels = (a.numpy() for a in fashion_mnist.load_split(source, split))
        for c, name in enumerate(fashion_mnist.CLASS_NAMES):
            d = root / split / name.replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(np.flatnonzero(labels == c)[:n]):
                Image.fromarray(images[i, 0]).save(d / f"{j:04d}.png")
    return root


def write_digits(root: Path) -> Path:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("the digits folder needs scikit-learn (its digits ship inside the package): pip install "
                 "scikit-learn, or pass --data fmnist")
    digits = load_digits()
    for j, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * 255 / 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(d / f"{j:04d}.png")
    return root


def train(folder: Path, out: Path, name: str, model: str, augment: str, epochs: int, seed: int) -> dict:
    overrides = [f"output_dir={out}", f"name={name}", f"data.name=imagefolder:{folder}", f"model.name={model}",
                 f"train.augment={augment}", f"train.epochs={epochs}", f"train.seed={seed}", "train.batch_size=64",
                 "train.lr=0.003"]
    result = train_generalist(load_run_config(None, overrides), overwrite=True,
                              console=stderr_console())
    m = result.metrics
    return {"model": model, "augment": augment, "epochs": epochs, "seed": seed, "val_top1": m["val"]["top1"],
            "test_top1": m["test"]["top1"], "train_seconds": m["train"]["seconds"]}


def table(rows: list[dict], key: str, columns: list, column_key: str) -> str:
    groups = sorted({r[key] for r in rows}, key=lambda v: [r[key] for r in rows].index(v))
    lines = [f"| {key} | " + " | ".join(f"{column_key} {c}" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for g in groups:
        cells = []
        for c in columns:
            accs = [r["test_top1"] for r in rows if r[key] == g and r[column_key] == c]
            cells.append(f"{statistics.mean(accs):.1f}" + (f" ({min(accs):.1f}-{max(accs):.1f})"
                                                             if len(accs) > 1 else "") if accs else "-")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["fmnist", "digits", "both"], default="both")
    ap.add_argument("--study", choices=["augment", "budget", "both"], default="both")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    info = machine_info()
    record = {"benchmark": "imagefolder_small", "machine": info, "studies": {},
              "command": "python benchmarks/imagefolder_small.py " + " ".join(sys.argv[1:])}
    markdown = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = {}
        if args.data in ("fmnist", "both"):
            folders["fmnist"] = write_fmnist(tmp / "fmnist")
        if args.data in ("digits", "both"):
            folders["digits"] = write_digits(tmp / "digits")
        for data, folder in folders.items():
            if args.study in ("augment", "both"):
                rows = [train(folder, tmp / "runs", "aug", "vit-edge-28", a, e, s)
                        for a in AUGMENTS for e in (5, 15) for s in args.seeds]
                record["studies"][f"{data}-augment"] = rows
                markdown.append(f"{data}, generalist vit-edge-28, test top-1 % (seeds {args.seeds}):\n\n"
                                + table(rows, "augment", [5, 15], "epochs"))
            if args.study in ("budget", "both"):
                rows = [train(folder, tmp / "runs", "budget", m, "auto", e, s)
                        for m in ("vit-edge-28", "vit-expert-28") for e in (4, 10, 20) for s in args.seeds]
                record["studies"][f"{data}-budget"] = rows
                markdown.append(f"{data}, augment auto, test top-1 % (seeds {args.seeds}):\n\n"
                                + table(rows, "model", [4, 10, 20], "epochs"))
    args.results.mkdir(parents=True, exist_ok=True)
    seeds = "-".join(map(str, args.seeds))
    out = args.results / f"{info['date']}-{info['host']}-imagefolder-small-{args.data}-{args.study}-seeds{seeds}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"machine: {describe(info)}\ncommand: {record['command']}\n")
    print("\n\n".join(markdown))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
