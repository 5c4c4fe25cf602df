"""Benchmark: which design choices make the small edge ViT learn fastest on a short CPU budget.

    python benchmarks/generalist_ablation.py            # 20k Fashion-MNIST images, 3 epochs per variant

Compares a linear 4x4-patch embedding with the convolutional stem of the presets, under three
augmentation policies, at the same budget, through the real training code path. Prints a Markdown
table and writes benchmarks/results/<date>-<host>-generalist-ablation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from askexpert.bench.machine import describe, machine_info
from askexpert.config import load_run_config
from askexpert.training import train_generalist

ARCH = {"class_token": False, "global_pool": "avg", "img_size": 28, "in_chans": 1, "embed_dim": 128, "depth": 4,
        "num_heads": 4}
VARIANTS = {
    "4x4 patches, crop-flip": ("vit_tiny_patch16_224", dict(ARCH, patch_size=4), "crop-flip"),
    "4x4 patches, no augmentation": ("vit_tiny_patch16_224", dict(ARCH, patch_size=4), "none"),
    "conv stem, crop-flip": ("askexpert_vit_convstem", ARCH, "crop-flip"),
    "conv stem, flip": ("askexpert_vit_convstem", ARCH, "flip"),
    "conv stem, no augmentation": ("askexpert_vit_convstem", ARCH, "none"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--output-dir", default="runs/ablation")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    rows = []
    for i, (label, (timm_name, kwargs, augment)) in enumerate(VARIANTS.items()):
        cfg = load_run_config(None, [
            f"name=ablation-{i}", f"output_dir={args.output_dir}", f"model.name={timm_name}",
            f"data.train_subset={args.train_subset}", "data.val_subset=3000", f"train.epochs={args.epochs}",
            f"train.augment={augment}",
        ])
        cfg.model.kwargs = kwargs
        m = train_generalist(cfg, overwrite=True).metrics
        rows.append({"variant": label, "val_top1": m["val"]["top1"], "test_top1": m["test"]["top1"],
                     "images_per_s": m["train"]["images_per_s"], "parameters": m["model"]["parameters"],
                     "flops_per_image": m["model"]["flops_per_image"]})
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-generalist-ablation.json"
    out.write_text(json.dumps({"machine": info, "train_subset": args.train_subset, "epochs": args.epochs,
                               "rows": rows, "command": "python benchmarks/generalist_ablation.py "
                               + " ".join(sys.argv[1:])}, indent=1))
    print(f"\nmachine: {describe(info)}; {args.train_subset} training images, {args.epochs} epochs; results: {out}")
    print("| variant | params | MFLOPs/img | val top-1 % | test top-1 % | train img/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['parameters'] / 1e6:.2f}M | {r['flops_per_image'] / 1e6:.1f} | "
              f"{r['val_top1']:.2f} | {r['test_top1']:.2f} | {r['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
