"""Benchmark: the decision map. Which mode ``askexpert plan`` recommends over edge device x link x image x server
device, for an accuracy floor between edge only's and full offload's, with its p95 and both energy readings
against the other modes'; three cells checked by direct runs on the testbed.

    python benchmarks/decision_map.py                  # the map: results/decision-map/{summary.json,map.md,map.png}
    python benchmarks/decision_map.py --checks         # and the three direct runs (a few minutes)

The accuracy of every cell is the bundle's validation curve (default: the demo's Fashion-MNIST bundle,
``runs/demo/system``, made by ``askexpert demo``); the costs are its own models for 28 px images and the paper's
DeiT-Tiny edge / DeiT-Small experts for 224 px images (a what-if with the same curve: ``askexpert plan --scale
paper``). The floor is halfway between edge only's and full offload's accuracy; a cell's recommendation is the
least total energy meeting it (the p95 where the edge device has no sourced power: the Orin's CPU).

The direct checks run the recommended option of three cells on the testbed (the edge emulated at its device
model's pace on one core, the expert server on the other, paced to the cell's server device with the test
images' answers computed ahead (``askexpert serve --server-device D --known-images``), the link emulated in the
edge's process), and compare the measured p95 and total energy with the plan's prediction (goal: within 20%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import open_system
from askexpert.costs.modes import COLLABORATIVE, EDGE_ONLY, FULL_OFFLOAD, Goals, options, recommend
from askexpert.errors import AskExpertError
from askexpert.runtime.settings import Connection, Inputs
from askexpert.system.plan import ImageForm, bundle_graphs, mode_parts, paper_graphs, sample_images
from askexpert_lab.bench.machine import machine_info

ROOT = Path(__file__).parents[1]
TRACES = ROOT.parent / "shared" / "traces"
EDGES = ("rpi4", "snapdragon-820", "jetson-agx-orin-cpu")
LINKS = ("wifi", "lte", "5g", "trace:{traces}/Verizon-LTE-short", "trace:{traces}/ATT-LTE-driving-2016")
IMAGES = (("raw", None, "bundle"), ("jpeg:85", 224, "paper"), ("raw", 224, "paper"))
SERVERS = ("h100", "jetson-agx-orin", "host")
CHECKS = (("rpi4", "wifi", 0, "h100"), ("snapdragon-820", "lte", 0, "jetson-agx-orin"),
          ("rpi4", "trace:{traces}/Verizon-LTE-short", 0, "host"))
MODES = (EDGE_ONLY, FULL_OFFLOAD, COLLABORATIVE)


def image_name(i: int) -> str:
    enc, size, _ = IMAGES[i]
    return f"{enc} {size or 28} px"


def goals_for(curve, edge: str) -> Goals:
    nothing = min(curve.points, key=lambda p: p.offload_rate)
    floor = (nothing.accuracy + curve.general_accuracy) / 2
    return Goals(min_accuracy=round(floor, 2), energy="total", minimise="p95" if edge == "jetson-agx-orin-cpu"
                 else "energy")


def cell(bundle, graphs, photos, edge: str, link: str, image: int, server: str) -> dict:
    enc, size, _ = IMAGES[image]
    curve = bundle.manifest.curve
    parts = mode_parts(curve, graphs, edge_device=edge, server_device_name=server, link=link,
                       image=ImageForm(enc, size), images=photos if enc != "raw" else None, source=str(bundle.root))
    goals = goals_for(curve, edge)
    opts = options(curve, parts)
    rec = recommend(opts, goals)
    single = {m: next((o.to_dict() for o in opts if o.mode == m), None) for m in (EDGE_ONLY, FULL_OFFLOAD)}
    return {"edge": edge, "link": parts.link, "image": image_name(image), "server": server,
            "recommended": rec.mode, "minimised": goals.minimise, "floor": goals.min_accuracy,
            "chosen": rec.chosen.to_dict() if rec.chosen else None,
            "modes": {m: (o.to_dict() if o else None) for m, o in rec.best.items()}, "single": single,
            "reasons": rec.reasons, "up_bytes": parts.up_bytes, "edge_ms": parts.edge_ms, "expert_ms": parts.expert_ms,
            "link_ms_median": float(np.median(parts.link_ms))}


def draw(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = {EDGE_ONLY: "#9ecae1", FULL_OFFLOAD: "#fdae6b", COLLABORATIVE: "#74c476", None: "#d9d9d9"}
    links = list(dict.fromkeys(c["link"] for c in cells))
    rows = [(e, i) for e in EDGES for i in map(image_name, range(len(IMAGES)))]
    fig, axes = plt.subplots(1, len(SERVERS), figsize=(6.2 * len(SERVERS), 0.55 * len(rows) + 2.2), sharey=True)
    keys = list(colours)
    for ax, server in zip(axes, SERVERS, strict=True):
        grid = np.zeros((len(rows), len(links)))
        for c in cells:
            if c["server"] != server:
                continue
            r, col = rows.index((c["edge"], c["image"])), links.index(c["link"])
            grid[r, col] = keys.index(c["recommended"])
            o = c["chosen"]
            if o is not None:
                energy = "" if o["total_mj"] != o["total_mj"] else f"\n{o['total_mj']:.0f} mJ"
                ax.text(col, r, f"{o['p95_ms']:.0f} ms{energy}", ha="center", va="center", fontsize=6)
        ax.imshow(grid, cmap=ListedColormap([colours[k] for k in keys]), vmin=-0.5, vmax=len(keys) - 0.5,
                  aspect="auto")
        ax.set_xticks(range(len(links)), [lk.replace("trace:", "") for lk in links], rotation=30, ha="right",
                      fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{e} / {i}" for e, i in rows], fontsize=7)
        ax.set_title(f"server: {server}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in keys]
    fig.legend(handles, [k or "none meets the floor" for k in keys], loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("askexpert plan's recommendation (floor halfway between edge only and full offload; least total "
                 "energy meeting it, p95 on the Orin CPU; text: the chosen option's p95 and total energy)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def markdown(summary: dict) -> str:
    lines = [f"# Decision map ({summary['date']}, {summary['machine']['cpu']})", "",
             f"Bundle `{summary['bundle']}`; accuracy floor {summary['floor']:.2f}% on validation (edge only "
             f"{summary['edge_only_accuracy']:.2f}%, full offload {summary['full_offload_accuracy']:.2f}%). "
             f"Command: `{summary['command']}`.", "",
             "| edge | image | link | server | recommended | p95 ms | total mJ | near-edge mJ | edge only p95 / mJ | "
             "full offload p95 / mJ |", "|---|---|---|---|---|---|---|---|---|---|"]

    def num(x: float, fmt: str = "{:.1f}") -> str:
        return "-" if x is None or x != x else fmt.format(x)  # NaN: the edge device has no sourced power

    def pair(o):
        return "-" if o is None else f"{num(o['p95_ms'])} / {num(o['total_mj'])}"

    for c in summary["cells"]:
        o = c["chosen"]
        lines.append(f"| {c['edge']} | {c['image']} | {c['link']} | {c['server']} | {c['recommended'] or 'none'} | "
                     + ("- | - | - |" if o is None else f"{num(o['p95_ms'])} | {num(o['total_mj'])} | "
                        f"{num(o['near_edge_mj'], '{:.2f}')} |")
                     + f" {pair(c['single'][EDGE_ONLY])} | {pair(c['single'][FULL_OFFLOAD])} |")
    counts = {m: sum(c["recommended"] == m for c in summary["cells"]) for m in (*MODES, None)}
    lines += ["", "Recommended: " + ", ".join(f"{m or 'none'} {n}" for m, n in counts.items()) + " cells."]
    if summary.get("checks"):
        lines += ["", "## Direct checks (testbed, server on this host)", "",
                  "| cell | option | predicted p95 ms | measured p95 ms | predicted total mJ | measured total mJ |",
                  "|---|---|---|---|---|---|"]
        for k in summary["checks"]:
            lines.append(f"| {k['cell']} | {k['option']} | {k['predicted_p95_ms']:.1f} | {k['measured_p95_ms']:.1f} | "
                         f"{k['predicted_total_mj']:.1f} | {k['measured_total_mj']:.1f} |")
    return "\n".join(lines) + "\n"


def direct_check(bundle, graphs, edge_device: str, link: str, image: int, server: str, n: int) -> dict:
    """Run the cell's recommended option on the testbed and compare with the plan's prediction."""
    from askexpert.costs.energy import CostModel
    from askexpert.costs.profiles import CPU_SERVER, device, edge_speed, network, radio_for
    from askexpert.costs.server_device import server_device
    from askexpert.devices import where
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.edge import ExpertTarget, summarize
    from askexpert.runtime.link import parse_link
    from askexpert.runtime.session import EdgeSettings, freeze_split
    from askexpert_lab.bench.baselines import run_on_edge
    from askexpert_lab.testbed.placement import EmulatedEdge
    from askexpert_lab.testbed.server import ServerProcess, server_pacing

    c = cell(bundle, graphs, None, edge_device, link, image, server)
    o = c["chosen"]
    if o is None:
        raise AskExpertError(f"cell {c['edge']} / {c['link']} recommends nothing to check", fix="choose another cell")
    m = bundle.manifest
    frozen = ROOT / "runs" / "decision-map" / f"test-{n}.npz"
    freeze_split(EdgeSettings(system=bundle, connection=Connection(server=None),
                              inputs=Inputs(sources=["split:test"], limit=n)), frozen)
    with np.load(frozen) as data:
        images, labels = data["images"], data["labels"]
    kind = {EDGE_ONLY: "edge-only", FULL_OFFLOAD: "full-offload-general", COLLABORATIVE: "collaborative"}[o["mode"]]
    policy = RoutingPolicy.from_spec(m.routing)
    if o["mode"] == COLLABORATIVE:
        policy = replace(policy, tau=o["tau"], k=o["k"])
    experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    parsed = parse_link(link)
    paced, features = server_pacing(bundle, server, frozen)
    with EmulatedEdge(edge_device) as edge, ServerProcess(bundle.root, threads=1, cpus=edge.server_cores,
                                                          extra_args=paced) as url:
        edge.recalibrate(kind)
        traces = edge.call(run_on_edge, kind=kind, generalist_onnx=bundle.generalist_onnx, threads=1, policy=policy,
                           experts=experts, images=images, labels=labels, url=None if kind == "edge-only" else url,
                           link=parsed)
    costs = CostModel(device(edge_speed(edge_device).energy_profile), device(CPU_SERVER),
                      network(radio_for(parsed.name if parsed else None)), server_where=where(),
                      server_device=server_device(server), server_features=features)
    summary, energy = summarize(traces), costs.energy(traces)
    return {"cell": f"{edge_device} / {image_name(image)} / {c['link']} / server {server}", "option": o["label"],
            "images": len(traces), "predicted_p95_ms": o["p95_ms"], "measured_p95_ms": summary.latency_ms.p95,
            "predicted_total_mj": o["total_mj"], "measured_total_mj": energy.total_mj_per_image,
            "predicted_offload_pct": o["offload_rate"], "measured_offload_pct": summary.offload_rate,
            "predicted_edge_mj": o["edge_mj"], "measured_edge_mj": energy.edge_mj_per_image,
            "predicted_near_edge_mj": o["near_edge_mj"], "measured_near_edge_mj": energy.server_mj_per_image,
            "measured_breakdown_ms_offloaded": summary.breakdown_ms_offloaded,
            "predicted_parts_ms": {"edge": c["edge_ms"], "expert": c["expert_ms"], "link_median": c["link_ms_median"]},
            "p95_error_pct": 100 * (o["p95_ms"] / summary.latency_ms.p95 - 1),
            "energy_error_pct": 100 * (o["total_mj"] / energy.total_mj_per_image - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "demo" / "system")
    ap.add_argument("--traces", type=Path, default=TRACES, help="the recorded links' folder (../shared/traces)")
    ap.add_argument("--checks", action="store_true", help="run the three direct checks on the testbed")
    ap.add_argument("--check-images", type=int, default=1000)
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "decision-map")
    args = ap.parse_args()
    try:
        bundle = open_system(args.bundle)
    except AskExpertError as err:
        sys.exit(f"{err} -- fix: {err.fix or 'make the demo bundle first: askexpert demo'}")
    curve = bundle.manifest.curve
    if curve is None or curve.general_accuracy is None:
        sys.exit(f"{args.bundle}'s curve has no full-offload accuracy -- fix: rebuild it with this askexpert "
                 "(askexpert demo --fresh, or build-system)")
    links = [lk.format(traces=args.traces) for lk in LINKS]
    graphs = {"bundle": bundle_graphs(bundle), "paper": paper_graphs()}
    photos = sample_images("photos")
    cells = []
    for server in SERVERS:
        for edge in EDGES:
            for image, (_, _, scale) in enumerate(IMAGES):
                for link in links:
                    cells.append(cell(bundle, graphs[scale], photos, edge, link, image, server))
                    print(f"{server:16s} {edge:20s} {image_name(image):14s} {cells[-1]['link']:32s} "
                          f"-> {cells[-1]['recommended']}", flush=True)
    goals = goals_for(curve, "rpi4")
    nothing = min(curve.points, key=lambda p: p.offload_rate)
    command = " ".join(["python", "benchmarks/decision_map.py", *sys.argv[1:]])
    summary = {"date": date.today().isoformat(), "machine": machine_info(), "command": command,
               "bundle": os.path.relpath(args.bundle, ROOT), "floor": goals.min_accuracy,
               "edge_only_accuracy": nothing.accuracy, "full_offload_accuracy": curve.general_accuracy,
               "grid": {"edges": EDGES, "links": links, "images": [image_name(i) for i in range(len(IMAGES))],
                        "servers": SERVERS}, "cells": cells, "checks": []}
    if args.checks:
        for edge, link, image, server in CHECKS:
            check = direct_check(bundle, graphs["bundle"], edge, link.format(traces=args.traces), image, server,
                                 args.check_images)
            print(json.dumps(check), flush=True)
            summary["checks"].append(check)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (args.results / "map.md").write_text(markdown(summary))
    draw(cells, args.results / "map.png")
    print(f"wrote {args.results}/summary.json, map.md, map.png")


if __name__ == "__main__":
    main()
