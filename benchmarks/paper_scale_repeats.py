"""Benchmark: the paper-scale ratios, repeated, on the emulated devices.

    python benchmarks/paper_scale_repeats.py [--repeats 3] [--images 60] [--edge-mode model]
                                             [--out results/paper-scale-repeats]

Each repeat is a fresh run of the paper-scale bench (askexpert_lab.bench.scale: DeiT-Tiny on the edge,
DeiT-Small experts, 224x224 photo crops, untrained weights) at the headline offload rate only (30%, raw
images): edge only, the medium model on the edge, routed edge execution, full offload and collaborative,
on both devices, priced on wifi, lte and 5g. Prints and writes each repeat's ratios (collaborative
latency against routed edge execution, total energy against full offload), their mean and spread, with
the placements (how each device was emulated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from askexpert_lab.bench.scale import ScaleProfile, run_paper_scale
from askexpert_lab.bench.scale_report import ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--edge-mode", default="model", choices=["model", "kernel", "paced"])
    ap.add_argument("--devices", nargs="+", default=["rpi4", "snapdragon-820"])
    ap.add_argument("--work", type=Path, default=Path("runs/paper-scale-repeats"))
    ap.add_argument("--out", type=Path, default=Path("results/paper-scale-repeats"))
    args = ap.parse_args()
    profile = ScaleProfile(devices=tuple(args.devices), rates=(0.3,), images=args.images, sweep_images=args.images,
                           encodings=())
    repeats = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        result = run_paper_scale(output_dir=args.work / f"repeat-{i}", results_dir=args.out / f"repeat-{i}",
                                 profile=profile, fresh=True, edge_mode=args.edge_mode)
        rows = {}
        for dev in args.devices:
            for link in profile.links:
                q = ratios(result, dev, link, 0.3)
                find = result.find
                rows[f"{dev}/{link}"] = {
                    "latency_vs_edge_execution": q["latency_vs_edge_execution"],
                    "latency_vs_edge_general": q["latency_vs_edge_general"],
                    "energy_vs_full_offload": q["energy_vs_full_offload"],
                    "near_edge_energy_vs_full_offload": q["near_edge_energy_vs_full_offload"],
                    "collaborative_ms": find(dev, "collaborative", link, 0.3).latency_ms.mean,
                    "edge_execution_ms": find(dev, "edge-execution", None, 0.3).latency_ms.mean,
                    "edge_only_ms": find(dev, "edge-only").latency_ms.mean,
                    "edge_general_ms": find(dev, "edge-general").latency_ms.mean,
                    "full_offload_ms": find(dev, "full-offload", link).latency_ms.mean,
                    "collaborative_mj": find(dev, "collaborative", link, 0.3).energy.total_mj_per_image,
                    "full_offload_mj": find(dev, "full-offload", link).energy.total_mj_per_image}
        repeats.append({"repeat": i, "seconds": time.perf_counter() - t0, "rows": rows,
                        "placements": result.placements})
        for key, r in rows.items():
            print(f"repeat {i} {key}: latency {r['latency_vs_edge_execution']:.3f}x routed edge execution "
                  f"({r['collaborative_ms']:.0f} vs {r['edge_execution_ms']:.0f} ms), energy "
                  f"{r['energy_vs_full_offload']:.3f}x full offload", flush=True)
    summary = {}
    for key in repeats[0]["rows"]:
        summary[key] = {}
        for metric in repeats[0]["rows"][key]:
            v = [r["rows"][key][metric] for r in repeats]
            summary[key][metric] = {"mean": statistics.mean(v), "min": min(v), "max": max(v), "values": v}
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"command": "python benchmarks/paper_scale_repeats.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("repeats", "images", "edge_mode")),
           "profile": {"devices": args.devices, "images": args.images, "rate": 0.3, "edge_mode": args.edge_mode},
           "repeats": repeats, "summary": summary}
    (args.out / "summary.json").write_text(json.dumps(out, indent=1))
    for key, s in summary.items():
        lat, en = s["latency_vs_edge_execution"], s["energy_vs_full_offload"]
        print(f"{key}: latency {lat['mean']:.3f}x ({lat['min']:.3f}..{lat['max']:.3f}), "
              f"energy {en['mean']:.3f}x ({en['min']:.3f}..{en['max']:.3f})")


if __name__ == "__main__":
    main()
