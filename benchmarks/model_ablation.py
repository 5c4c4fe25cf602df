"""Benchmark: which design choices make a small ViT learn fastest on a short CPU budget.

    python benchmarks/model_ablation.py                   # the edge generalist's stem and augmentation
    python benchmarks/model_ablation.py --suite medium    # the near-edge medium model's shape and lr

Every variant trains through the real code path (``askexpert.training.train_generalist``) on the
same Fashion-MNIST subset, for the same number of epochs, with the same schedule (AdamW, 1 epoch of
warm-up, cosine decay, label smoothing 0.1), and is scored on 3,000 validation and all 10,000 test
images. Suites:

- ``generalist``: a linear 4x4 patch embedding against the presets' convolutional stem, under
  three augmentation policies (ViT d128 x 4, lr 2e-3);
- ``medium``: the medium model (``vit-expert-28``, conv stem, flips) with its heads, width, depth
  and peak learning rate varied, beside the generalist preset at its own lr; the medium model is
  only worth offloading to if it learns more per image than the generalist.

Prints a Markdown table and writes results/<date>-<host>-<suite>-ablation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from askexpert.config import load_run_config
from askexpert.models.presets import PRESETS
from askexpert.training import train_generalist
from askexpert_lab.bench.machine import describe, machine_info

_SCRATCH = {"class_token": False, "global_pool": "avg", "img_size": 28, "in_chans": 1}
_EDGE = dict(_SCRATCH, embed_dim=128, depth=4, num_heads=4)
_PATCH, _STEM = "vit_tiny_patch16_224", "askexpert_vit_convstem"
_MEDIUM = PRESETS["vit-expert-28"].kwargs  # d192 x 6, 3 heads: the variants change one thing at a time

# label -> (timm model, kwargs, augmentation, peak lr)
SUITES = {
    "generalist": {
        "4x4 patches, crop-flip": (_PATCH, dict(_EDGE, patch_size=4), "crop-flip", 2e-3),
        "4x4 patches, no augmentation": (_PATCH, dict(_EDGE, patch_size=4), "none", 2e-3),
        "conv stem, crop-flip": (_STEM, _EDGE, "crop-flip", 2e-3),
        "conv stem, flip": (_STEM, _EDGE, "flip", 2e-3),
        "conv stem, no augmentation": (_STEM, _EDGE, "none", 2e-3),
    },
    "medium": {
        "generalist preset d128 x 4, 4 heads, lr 3e-3": (_STEM, PRESETS["vit-edge-28"].kwargs, "flip", 3e-3),
        "d192 x 6, 3 heads, lr 2e-3 (general-fmnist as it was)": (_STEM, _MEDIUM, "flip", 2e-3),
        "d192 x 6, 3 heads, lr 1e-3": (_STEM, _MEDIUM, "flip", 1e-3),
        "d192 x 6, 6 heads, lr 2e-3": (_STEM, dict(_MEDIUM, num_heads=6), "flip", 2e-3),
        "d192 x 6, 6 heads, lr 1e-3": (_STEM, dict(_MEDIUM, num_heads=6), "flip", 1e-3),
        "d256 x 4, 8 heads, lr 2e-3": (_STEM, dict(_MEDIUM, embed_dim=256, depth=4, num_heads=8), "flip", 2e-3),
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="generalist")
    ap.add_argument("--only", nargs="+", type=int, help="run only these variants (0-based indices)")
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="training seed (the data subset stays the same)")
    ap.add_argument("--output-dir", default="runs/ablation")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    info = machine_info()
    variants = list(SUITES[args.suite].items())
    chosen = args.only if args.only is not None else range(len(variants))
    if any(not 0 <= i < len(variants) for i in chosen):
        ap.error(f"--only: the {args.suite} suite has variants 0..{len(variants) - 1}")
    rows = []
    for i in chosen:
        label, (timm_name, kwargs, augment, lr) = variants[i]
        print(f"[{args.suite} {i}] {label}", flush=True)
        cfg = load_run_config(None, [
            f"name={args.suite}-ablation-{i}", f"output_dir={args.output_dir}", f"model.name={timm_name}",
            f"data.train_subset={args.train_subset}", "data.val_subset=3000", f"train.epochs={args.epochs}",
            f"train.augment={augment}", f"train.lr={lr}", f"train.seed={args.seed}",
        ])
        cfg.model.kwargs = kwargs
        m = train_generalist(cfg, overwrite=True).metrics
        rows.append({"variant": label, "lr": lr, "val_top1": m["val"]["top1"], "test_top1": m["test"]["top1"],
                     "images_per_s": m["train"]["images_per_s"], "parameters": m["model"]["parameters"],
                     "flops_per_image": m["model"]["flops_per_image"]})
    args.results.mkdir(parents=True, exist_ok=True)
    tag = f"-seed{args.seed}" if args.seed else ""
    out = args.results / f"{info['date']}-{info['host']}-{args.suite}-ablation{tag}.json"
    out.write_text(json.dumps({"machine": info, "suite": args.suite, "train_subset": args.train_subset,
                               "epochs": args.epochs, "seed": args.seed, "rows": rows,
                               "command": "python benchmarks/model_ablation.py " + " ".join(sys.argv[1:])},
                              indent=1))
    print(f"\nmachine: {describe(info)}; {args.train_subset} training images, {args.epochs} epochs; results: {out}")
    print("| variant | params | MFLOPs/img | val top-1 % | test top-1 % | train img/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['parameters'] / 1e6:.2f}M | {r['flops_per_image'] / 1e6:.1f} | "
              f"{r['val_top1']:.2f} | {r['test_top1']:.2f} | {r['images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
