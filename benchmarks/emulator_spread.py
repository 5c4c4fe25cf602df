"""Benchmark: how far the same edge run moves on the emulated device when repeated in one placement.

    python benchmarks/emulator_spread.py --bundle BUNDLE [--device rpi4] [--runs 4] [--images 1000]
                                         [--edge-mode model|kernel|paced] [--images-file split:test]

The bundle served on the server cores, the edge emulated as ``--device`` on its core, the same fixed tau,
link and images ``--runs`` times back to back (no recalibration between them): each run's p95 latency
and edge energy (Raspberry Pi 4 power, wifi radio), and the reference workload's time before it. The
spread is the floor under any prediction on this testbed (BENCHMARKS.md, "Operating points that hold").
Without --images-file it reads the operating-points benchmark's test images where they exist, else the
generalist's own test split. ``--edge-mode``: the device model (default) or the older one-ratio emulation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from askexpert.costs.energy import edge_mj_per_image
from askexpert.costs.profiles import device, edge_speed, network
from askexpert.runtime.link import parse_link
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.runtime.settings import Connection, Inputs
from askexpert_lab.testbed.placement import EmulatedEdge
from askexpert_lab.testbed.server import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--device", default="rpi4")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--images-file", default=None)
    ap.add_argument("--link", default="wifi")
    ap.add_argument("--edge-mode", default="model", choices=["model", "kernel", "paced"])
    ap.add_argument("--out", type=Path, help="write the runs and the placement here (JSON)")
    args = ap.parse_args()
    images = args.images_file or ("runs/operating-points/test.npz" if Path("runs/operating-points/test.npz").is_file()
                                  else "split:test")
    rows = []
    with EmulatedEdge(args.device, mode=args.edge_mode) as edge, \
            ServerProcess(args.bundle, threads=1, cpus=edge.server_cores, extra_args=["--no-general"]) as url:
        s = EdgeSettings(system=args.bundle, threads=edge_speed(args.device).threads,
                         connection=Connection(server=url, link=parse_link(args.link)),
                         inputs=Inputs(sources=[str(images)], limit=args.images))
        for i in range(args.runs):
            ref = edge.reference_ms()
            rep = edge.call(run_edge, s=s)
            row = {"run": i, "reference_ms": ref, "offload_rate": rep.summary.offload_rate,
                   "p95_ms": rep.summary.latency_ms.p95,
                   "edge_ms": float(np.mean([t.edge_ms for t in rep.traces])),
                   "edge_mj": edge_mj_per_image(rep.traces, device("raspberry-pi-4"), network("wifi")),
                   "offloaded_breakdown_ms": rep.summary.breakdown_ms_offloaded}
            rows.append(row)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["offloaded_breakdown_ms"].items())
            print(f"run {i}: reference {ref:.0f} ms, offload {row['offload_rate']:.1f}%, p95 {row['p95_ms']:.1f} ms, "
                  f"generalist mean {row['edge_ms']:.2f} ms, edge {row['edge_mj']:.1f} mJ; an offload's parts: {parts}",
                  flush=True)
    spread = {}
    for key in ("p95_ms", "edge_mj"):
        v = [r[key] for r in rows]
        spread[key] = 50 * (max(v) - min(v)) / np.mean(v)
        print(f"{key}: {min(v):.1f}..{max(v):.1f} (+/- {spread[key]:.1f}% about the mean)")
    out = {"edge_mode": args.edge_mode, "bundle": str(args.bundle), "images": images, "placement":
           edge.placement.to_dict(), "runs": rows, "spread_pct": spread}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
