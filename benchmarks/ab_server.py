"""Benchmark: two versions of the expert server side by side, alternating, on this machine.

    git worktree add /tmp/old COMMIT
    python benchmarks/ab_server.py --old-src /tmp/old/src [--system runs/demo/system] [--pairs 3]

Each pair starts the old server (``PYTHONPATH=OLD_SRC``) and then this checkout's, serving the same
bundle with one torch thread, and measures on each: 16 closed-loop batch-1 clients (bare asyncio
streams, as in benchmarks/serving.py) for ``--seconds`` and the batch-1 offload overhead of one
client (end to end minus expert compute). On a noisy shared VM only alternating pairs compare.
Writes results/<date>-<host>-ab-server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import _closed_loop_raw, overhead  # noqa: E402 (the same measurements as serving.py)

from askexpert_lab.bench.machine import describe, machine_info  # noqa: E402
from askexpert_lab.testbed.server import ServerProcess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", type=Path, required=True, help="the src/ directory of the version to compare")
    ap.add_argument("--system", type=Path, default=Path("runs/demo/system"))
    ap.add_argument("--expert", default="0")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (256, 1, 28, 28), dtype=np.uint8)
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    saved = os.environ.get("PYTHONPATH")
    try:
        for pair in range(args.pairs):
            for name in ("old", "new"):
                os.environ["PYTHONPATH"] = str(args.old_src.resolve()) if name == "old" else ""
                server = ServerProcess(args.system, threads=1, extra_args=["--no-general"])
                with server as url:
                    loaded = asyncio.run(_closed_loop_raw(url, images, args.expert, 16, args.seconds, server.proc.pid))
                    over = overhead(url, images, args.expert, 600)
                runs[name].append({"images_per_s": loaded["images_per_s"], "mean_batch": loaded["mean_batch"],
                                   "overhead_ms_p50": over["overhead_ms_p50"]})
                print(f"pair {pair + 1} {name}: {runs[name][-1]}", flush=True)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    medians = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in runs.items()}
    info = machine_info()
    out = args.results / f"{info['date']}-{info['host']}-ab-server.json"
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "old_src": str(args.old_src), "runs": runs, "medians": medians,
                               "command": "python benchmarks/ab_server.py " + " ".join(sys.argv[1:])}, indent=1))
    print(f"\nmachine: {describe(info)}; results: {out}\n\n| server | 16 clients img/s (each pair) | median | "
          "overhead p50 ms (each pair) | median |\n|---|---|---|---|---|")
    for name, rows in runs.items():
        rates = ", ".join(f"{r['images_per_s']:.0f}" for r in rows)
        overheads = ", ".join(f"{r['overhead_ms_p50']:.2f}" for r in rows)
        print(f"| {name} | {rates} | {medians[name]['images_per_s']:.0f} | {overheads} | "
              f"{medians[name]['overhead_ms_p50']:.2f} |")

if __name__ == "__main__":
    main()
