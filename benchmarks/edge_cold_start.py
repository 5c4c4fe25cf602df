"""Benchmark: the edge's cold start (process start to its first answer) and resident memory, the
bundle edge (ONNX Runtime + NumPy + httpx) against the run-directory edge (torch; the edge as it was
before bundles: checkpoint in torch, calibration from the cached validation logits), side by side.

    python benchmarks/edge_cold_start.py                 # the demo's models (trained or reused in runs/demo)
    python benchmarks/edge_cold_start.py --repeats 7 --generalist RUN --experts RUN

One expert server (the bundle, 1 thread) answers both. Each repeat starts a fresh process per edge,
interleaved, that answers one image file (``askexpert edge ... --input one.png``) and exits: the
process's wall time from ``Popen`` to exit bounds its cold start, and ``os.wait4`` gives its peak
resident memory. Medians over the repeats; goals: cold start <= 1 s, RSS <= 150 MB on this machine.
Writes benchmarks/results/<date>-<host>-edge-cold-start.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from askexpert.bench.machine import describe, machine_info

GOAL_S, GOAL_MB = 1.0, 150.0


def run_child(args: list[str]) -> tuple[float, float]:
    """Start, wait with wait4 (to read the child's own peak RSS), and time it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # files: no pipe to fill up
        t0 = time.perf_counter()
        pid = subprocess.Popen(args, stdout=out, stderr=err, env=env).pid
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"edge failed ({' '.join(args)}): {err.read().decode()[-2000:]}")
        out.seek(0)
        if b"offload rate" not in out.read():
            raise SystemExit(f"edge printed no summary ({' '.join(args)})")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generalist", type=Path, help="a generalist run (default: the demo's)")
    ap.add_argument("--experts", type=Path, help="an expert run (default: the demo's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    from PIL import Image

    from askexpert.serving.process import ServerProcess
    from askexpert.system.build import build_system

    if args.generalist is None or args.experts is None:
        from askexpert.demo import demo_pipeline
        from askexpert.system.pipeline import train_system

        trained = train_system(demo_pipeline(), Path("runs/demo"))
        args.generalist, args.experts = trained.generalist, trained.experts["progressive"]
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_system(args.generalist, args.experts, Path(tmp) / "system").root
        from askexpert.data.fashion_mnist import load_split, locate

        images, _ = load_split(locate(None, allow_download=False), "test")
        image = Path(tmp) / "one.png"
        Image.fromarray(images[0, 0].numpy()).save(image)
        cli = [sys.executable, "-m", "askexpert.cli", "edge"]
        rows: dict[str, list[tuple[float, float]]] = {"run directory (torch)": [], "bundle (ONNX Runtime)": []}
        with ServerProcess(bundle, threads=1) as url:
            common = ["--server", url, "--input", str(image), "--threads", "1"]
            run_dir = [*cli, str(args.generalist), *common]
            bundled = [*cli, str(bundle), *common]
            run_child(run_dir)  # warm the logits cache and the page cache once, untimed
            run_child(bundled)
            for _ in range(args.repeats):
                rows["run directory (torch)"].append(run_child(run_dir))
                rows["bundle (ONNX Runtime)"].append(run_child(bundled))
    table = {name: {"cold_start_s": statistics.median(s for s, _ in r), "rss_mb": statistics.median(m for _, m in r),
                    "runs": [{"seconds": s, "rss_mb": m} for s, m in r]} for name, r in rows.items()}
    old, new = table["run directory (torch)"], table["bundle (ONNX Runtime)"]
    result = {"machine": info, "command": "python benchmarks/edge_cold_start.py " + " ".join(sys.argv[1:]),
              "generalist": str(args.generalist), "experts": str(args.experts), "repeats": args.repeats,
              "edges": table, "ratio_cold_start": new["cold_start_s"] / old["cold_start_s"],
              "ratio_rss": new["rss_mb"] / old["rss_mb"],
              "goals": {"cold_start_le_1s": new["cold_start_s"] <= GOAL_S, "rss_le_150mb": new["rss_mb"] <= GOAL_MB}}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-edge-cold-start.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"machine: {describe(info)}; median of {args.repeats}, interleaved; results: {out}\n")
    print("| edge | cold start (process start to first answer, s) | peak RSS (MB) |\n|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['cold_start_s']:.2f} | {row['rss_mb']:.0f} |")
    print(f"\nbundle / run directory: cold start {result['ratio_cold_start']:.2f}x, RSS {result['ratio_rss']:.2f}x; "
          f"goals (<= {GOAL_S:.0f} s, <= {GOAL_MB:.0f} MB): {result['goals']}")


if __name__ == "__main__":
    main()
