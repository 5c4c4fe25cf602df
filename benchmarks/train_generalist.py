"""Benchmark: full training of the edge generalist through the real training code path.

    python benchmarks/train_generalist.py                       # configs/generalist-fmnist.yaml, seed 0
    python benchmarks/train_generalist.py --seeds 0 1 2 --set train.epochs=30

Writes results/<date>-<host>-generalist.json (accuracy, images/s, wall time, machine)
and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from askexpert.config import load_run_config
from askexpert.training import train_generalist
from askexpert_lab.bench.machine import describe, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="generalist-fmnist")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--output-dir", default="runs/bench")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()

    info = machine_info()
    runs = []
    for seed in args.seeds:
        overrides = [f"output_dir={args.output_dir}", f"train.seed={seed}", *args.set]
        cfg = load_run_config(args.config, overrides)
        cfg = cfg.model_copy(update={"name": f"{cfg.name}-seed{seed}"})
        started = time.perf_counter()
        result = train_generalist(cfg, overwrite=True)
        wall = time.perf_counter() - started
        m = result.metrics
        runs.append({
            "seed": seed, "test_top1": m["test"]["top1"], "val_top1": m["val"]["top1"],
            "train_images_per_s": m["train"]["images_per_s"], "train_seconds": m["train"]["seconds"],
            "wall_seconds": wall, "parameters": m["model"]["parameters"],
            "flops_per_image": m["model"]["flops_per_image"], "device": m["train"]["device"],
        })
    summary = {
        "benchmark": "train_generalist", "config": args.config, "overrides": args.set,
        "resolved_config": cfg.model_dump(mode="json"), "machine": info, "runs": runs,
        "command": "python benchmarks/train_generalist.py " + " ".join(sys.argv[1:]),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-generalist-{cfg.data.name}-{cfg.train.epochs}ep.json"
    out.write_text(json.dumps(summary, indent=1))

    def stat(key: str) -> str:
        values = [r[key] for r in runs]
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"

    print(f"\nmachine: {describe(info)}; results: {out}")
    print("| model | params | epochs | test top-1 % | val top-1 % | train img/s | train min | wall min |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {cfg.model.name} | {runs[0]['parameters'] / 1e6:.2f}M | {cfg.train.epochs} | {stat('test_top1')} | "
          f"{stat('val_top1')} | {statistics.median(r['train_images_per_s'] for r in runs):.0f} | "
          f"{statistics.median(r['train_seconds'] for r in runs) / 60:.1f} | "
          f"{statistics.median(r['wall_seconds'] for r in runs) / 60:.1f} |")


if __name__ == "__main__":
    main()
