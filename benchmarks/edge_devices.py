"""Accuracy vs latency with one curve per emulated edge device, and the paper's ratios per device.

Reads the JSON results of ``askexpert bench --edge-device DEVICE`` runs (one or more per device:
repeats are summarised by their median) and writes a plot and a Markdown table::

    askexpert bench --profile quick --edge-device rpi4
    askexpert bench --profile quick --edge-device snapdragon-820
    python benchmarks/edge_devices.py results/*-quick-rpi4*.json results/*-quick-snapdragon-820*.json \
        --out results/edge-devices
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def ratios(result: dict) -> dict:
    c = result["cells"]
    collab = c["baseline-collaborative-progressive"]
    out = {"accuracy": collab["summary"]["accuracy"], "latency_ms": collab["summary"]["latency_ms"]["mean"]}
    for key in ("edge-execution", "edge-general", "edge-only", "full-offload-general"):
        row = c[f"baseline-{key}"]
        out[f"{key}_latency_ms"] = row["summary"]["latency_ms"]["mean"]
        out[f"{key}_accuracy"] = row["summary"]["accuracy"]
        out[f"vs_{key}"] = out["latency_ms"] / row["summary"]["latency_ms"]["mean"]
    offload = c["baseline-full-offload-general"]["energy"]["total_mj_per_image"]
    out["total_mj"] = collab["energy"]["total_mj_per_image"]
    out["offload_total_mj"] = offload
    out["energy_vs_offload"] = out["total_mj"] / offload
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("results/edge-devices"))
    args = ap.parse_args()
    runs = defaultdict(list)
    for path in args.results:
        result = json.loads(path.read_text())
        device = (result.get("placement") or {}).get("device", "host")
        runs[device].append(result)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    lines = ["| device | mode | runs | slowdown | collaborative ms | routed edge exec ms | medium model on edge ms | "
             "ratio vs routed | ratio vs medium | accuracy collab / routed / medium % | total mJ collab / offload | "
             "energy ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for device, results in sorted(runs.items()):
        med = {k: statistics.median(ratios(r)[k] for r in results) for k in ratios(results[0])}
        p = results[0].get("placement") or {}
        slow = statistics.median(r["placement"]["achieved_slowdown"] for r in results) if p.get("achieved_slowdown") \
            else 1.0
        lines.append(
            f"| {device} | {p.get('label', 'host')} | {len(results)} | x{slow:.2f} | {med['latency_ms']:.2f} | "
            f"{med['edge-execution_latency_ms']:.2f} | {med['edge-general_latency_ms']:.2f} | "
            f"{med['vs_edge-execution']:.2f}x | {med['vs_edge-general']:.2f}x | {med['accuracy']:.2f} / "
            f"{med['edge-execution_accuracy']:.2f} / {med['edge-general_accuracy']:.2f} | {med['total_mj']:.1f} / "
            f"{med['offload_total_mj']:.1f} | {med['energy_vs_offload']:.2f}x |")
        taus = sorted((c for k, c in results[0]["cells"].items() if k.startswith("tau-") and c["k"] == 3),
                      key=lambda c: c["summary"]["latency_ms"]["mean"])
        sweep = f"{device}: collaborative, tau sweep (k=3, {results[0]['sweep_images']} images)"
        line, = ax.plot([c["summary"]["latency_ms"]["mean"] for c in taus], [c["summary"]["accuracy"] for c in taus],
                        marker="o", label=sweep)
        base = results[0]["cells"]
        for key, marker in (("edge-execution", "s"), ("edge-general", "D"), ("edge-only", "v")):
            row = base[f"baseline-{key}"]["summary"]
            ax.scatter(row["latency_ms"]["mean"], row["accuracy"], marker=marker, color=line.get_color(), s=60,
                       label=f"{device}: {key} ({results[0]['test_images']} images)")
    ax.set_xlabel("mean latency an image (ms, emulated edge)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(args.out / "accuracy_vs_latency_by_device.png", dpi=120)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"plot: {args.out / 'accuracy_vs_latency_by_device.png'}")


if __name__ == "__main__":
    main()
