"""Benchmark: the Ray Serve backend against the uvicorn server, side by side on this machine.

    python benchmarks/ray_serve.py [--system runs/demo/system] [--expert 0] [--repeats 3]

Each repeat starts, one after another, the uvicorn server, the Ray Serve backend with one replica of
the expert, and with two replicas (``--ray-set experts.replicas=2``), all serving the same expert of
the same bundle with one torch thread a replica, and measures on each, as benchmarks/serving.py does:
the batch-1 per-request overhead of one client (end to end minus the expert's compute, p50 and p95)
and the throughput of 16 closed-loop batch-1 clients (bare asyncio streams, a light load generator).
Ray starts a local cluster for each run (the replicas, the ingress, the proxy and the controller are
processes of their own, sharing this machine's cores with the load generator).
Writes results/<date>-<host>-ray-serve.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import _closed_loop_raw, overhead  # noqa: E402 (the same measurements as serving.py)

from askexpert_lab.bench.machine import describe, machine_info  # noqa: E402
from askexpert_lab.testbed.server import ServerProcess  # noqa: E402

VARIANTS = {"uvicorn": [], "ray, 1 replica": ["--backend", "ray"],
            "ray, 2 replicas": ["--backend", "ray", "--ray-set", "experts.replicas=2"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", type=Path, default=Path("runs/demo/system"), help="a bundle (askexpert demo makes one)")
    ap.add_argument("--expert", default="0")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    info = machine_info()
    from askexpert.serving.pool import ExpertPool

    spec = ExpertPool(args.system, only=[args.expert], trace=False).get(args.expert).spec
    images = np.random.default_rng(0).integers(0, 256, (256, spec.input.channels, spec.input.size, spec.input.size),
                                               dtype=np.uint8)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        for name, extra in VARIANTS.items():
            server = ServerProcess(args.system, threads=1, extra_args=["--experts", args.expert, *extra],
                                   startup_timeout_s=300)
            with server as url:
                over = overhead(url, images, args.expert, args.requests)
                loaded = asyncio.run(_closed_loop_raw(url, images, args.expert, 16, args.seconds))
            runs[name].append({"overhead": over, "clients_16": loaded})
            print(f"repeat {r + 1}, {name}: overhead p50 {over['overhead_ms_p50']:.2f} ms, p95 "
                  f"{over['overhead_ms_p95']:.2f} ms; 16 clients {loaded['images_per_s']:.0f} images/s "
                  f"(mean batch {loaded['mean_batch']:.1f})", flush=True)

    def median(name: str, key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs[name])

    summary = {name: {"overhead_ms_p50": median(name, "overhead", "overhead_ms_p50"),
                      "overhead_ms_p95": median(name, "overhead", "overhead_ms_p95"),
                      "images_per_s_16_clients": median(name, "clients_16", "images_per_s"),
                      "mean_batch_16_clients": median(name, "clients_16", "mean_batch")} for name in VARIANTS}
    base = summary["uvicorn"]
    result = {"machine": info, "system": str(args.system), "expert": args.expert, "runs": runs, "medians": summary,
              "command": "python benchmarks/ray_serve.py " + " ".join(sys.argv[1:])}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-ray-serve.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nmachine: {describe(info)}; expert {args.expert} of {args.system}, 1 torch thread a replica; "
          f"medians of {args.repeats} repeats; results: {out}\n")
    print("| server | overhead p50 | overhead p95 | 16 clients, images/s | vs uvicorn | mean batch |\n"
          "|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['overhead_ms_p50']:.2f} ms | {row['overhead_ms_p95']:.2f} ms | "
              f"{row['images_per_s_16_clients']:.0f} | "
              f"{row['images_per_s_16_clients'] / base['images_per_s_16_clients']:.2f}x | "
              f"{row['mean_batch_16_clients']:.1f} |")


if __name__ == "__main__":
    main()
