"""Benchmark: where the offload overhead above the bare uvicorn floor comes from, side by side.

    python benchmarks/overhead_floor.py [--system runs/demo/system] [--expert 0] [--repeats 3]

Each repeat measures, with the same httpx client loop of batch-1 requests (benchmarks/serving.py's
``overhead`` and ``floor``): askexpert's overhead (end to end minus the expert's own compute time),
as served by default (a lone request's batch runs on the event loop's thread) and with
``--inline-max 0`` (every batch handed to the expert's model thread and back), and four floors, each
a bare uvicorn + Starlette endpoint that reads the same body and answers a small JSON, with the time
it spends on the request's "compute" subtracted:

- ``bare``: nothing in between (the floor of issue 16's goal);
- ``model``: the same expert's forward pass inline;
- ``sleep``: the endpoint sleeps as long as the expert computes (server and client idle that long);
- ``spin``: the endpoint busy-loops as long, touching no memory (the server's core stays busy).

If ``sleep`` pays what ``model`` pays, the extra cost is that of waiting (idle cores waking up on this
VM), not of the model or of askexpert's code. Writes results/<date>-<host>-overhead-floor.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import floor, overhead  # noqa: E402 (the same measurements as serving.py)

from askexpert_lab.bench.machine import describe, machine_info  # noqa: E402
from askexpert_lab.testbed.server import ServerProcess  # noqa: E402

FLOORS = ("bare", "model", "sleep", "spin")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", type=Path, default=Path("runs/demo/system"), help="a bundle (askexpert demo makes one)")
    ap.add_argument("--expert", default="0")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    info = machine_info()
    images = np.random.default_rng(0).integers(0, 256, (256, 1, 28, 28), dtype=np.uint8)
    rows = []
    for r in range(args.repeats):
        row = {}
        for name, extra in (("askexpert", []), ("model_thread", ["--inline-max", "0"])):
            with ServerProcess(args.system, threads=1, extra_args=["--experts", args.expert, *extra]) as url:
                row[name] = overhead(url, images, args.expert, args.requests)
        over = row["askexpert"]
        for variant in FLOORS:
            row[variant] = floor(args.system, args.expert, images, args.requests, variant,
                                 wait_ms=over["compute_ms_p50"])
        rows.append(row)
        print(f"repeat {r + 1}: askexpert {over['overhead_ms_p50']:.2f} ms (compute {over['compute_ms_p50']:.2f} ms), "
              f"--inline-max 0 {row['model_thread']['overhead_ms_p50']:.2f} ms; "
              + ", ".join(f"{v} {row[v]['overhead_ms_p50']:.2f} ms" for v in FLOORS), flush=True)
    names = ("askexpert", "model_thread", *FLOORS)
    medians = {name: statistics.median(row[name]["overhead_ms_p50"] for row in rows) for name in names}
    result = {"machine": info, "system": str(args.system), "expert": args.expert, "rows": rows, "medians": medians,
              "command": "python benchmarks/overhead_floor.py " + " ".join(sys.argv[1:])}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-overhead-floor.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nmachine: {describe(info)}; expert {args.expert} of {args.system}; results: {out}\n")
    print("| repeat | askexpert | --inline-max 0 | bare floor | floor + model | floor + sleep | floor + spin | "
          "askexpert / bare | askexpert / floor + model |\n|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{row[n]['overhead_ms_p50']:.2f} ms" for n in names)
              + f" | {row['askexpert']['overhead_ms_p50'] / row['bare']['overhead_ms_p50']:.2f}x"
              + f" | {row['askexpert']['overhead_ms_p50'] / row['model']['overhead_ms_p50']:.2f}x |")
    print("| median | " + " | ".join(f"{medians[n]:.2f} ms" for n in names)
          + f" | {medians['askexpert'] / medians['bare']:.2f}x | {medians['askexpert'] / medians['model']:.2f}x |")


if __name__ == "__main__":
    main()
