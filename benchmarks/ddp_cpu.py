"""Benchmark: training in two processes (torchrun, gloo) against one, on this machine's CPU cores.

    python benchmarks/ddp_cpu.py [--images 6000] [--epochs 1] [--model vit-edge-28]

The same generalist run (Fashion-MNIST, no augmentation, batch 128) three ways, one after the other:
one process with 1 torch thread, one process with 2 threads (the usual way to use 2 cores), and
``torchrun --nproc-per-node 2`` with 1 thread each. Reports the training throughput each run logged
(images/s over the epoch, all processes together) and the final train loss. Writes
results/<date>-<host>-ddp-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from askexpert_lab.bench.machine import describe, machine_info


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="vit-edge-28")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = [f"data.train_subset={args.images}", "data.val_subset=500", "data.test_subset=500",
                "train.batch_size=128", f"train.epochs={args.epochs}", "train.augment=none", f"output_dir={tmp}",
                f"model.name={args.model}"]
        flags = [x for item in sets for x in ("--set", item)]
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        ways = [("1 process, 1 thread", 1, [sys.executable, "-m", "askexpert"]),
                ("1 process, 2 threads", 2, [sys.executable, "-m", "askexpert"]),
                ("torchrun, 2 processes x 1 thread (gloo)", 1, [torchrun, "--nproc-per-node", "2", "-m", "askexpert"])]
        for i, (label, threads, prefix) in enumerate(ways):
            run([*prefix, "train", "generalist", "--name", f"run{i}", *flags, "--set", f"train.threads={threads}"],
                threads)
            last = json.loads((Path(tmp) / f"run{i}" / "metrics.jsonl").read_text().splitlines()[-1])
            rows.append({"way": label, "images_per_s": last["images_per_s"], "train_loss": last["train_loss"],
                         "train_images": last["train_images"], "precision": last["precision"]})
            print(f"{label}: {last['images_per_s']:.0f} img/s, train loss {last['train_loss']:.4f}", flush=True)
    info = machine_info()
    out = args.results / f"{info['date']}-{info['host']}-ddp-cpu.json"
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "rows": rows, "command": "python benchmarks/ddp_cpu.py "
                               + " ".join(sys.argv[1:])}, indent=1))
    base = rows[1]["images_per_s"]
    print(f"\nmachine: {describe(info)}; results: {out}\n\n| {args.model}, {args.images} images, batch 128 | "
          "images/s | vs 1 process x 2 threads | train loss |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['way']} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | {r['train_loss']:.4f} |")


if __name__ == "__main__":
    main()
