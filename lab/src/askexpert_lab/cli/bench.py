"""The ``askexpert bench`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import add_edge_device_flags, log_console, table_console


def cmd_bench(args: argparse.Namespace) -> int:
    from askexpert_lab.bench.report import goals
    from askexpert_lab.bench.suite import run_bench

    if args.profile == "paper-scale":
        if args.server_device != "host":
            from askexpert.errors import ConfigError

            raise ConfigError("--server-device paces the quick and full profiles; the paper-scale bench prices its "
                              "server at --server-profile", fix="leave --server-device out with --profile paper-scale, "
                              "or use askexpert plan --scale paper --server-device DEVICE")
        return _paper_scale(args)
    result = run_bench(args.profile, output_dir=Path(args.output_dir), results_dir=Path(args.results),
                       fresh=args.fresh, edge_profile=args.edge_profile, server_profile=args.server_profile,
                       radio=args.radio, edge_device=args.edge_device, edge_mode=args.edge_mode,
                       server_device=args.server_device, console=log_console())
    table = Table(title=f"bench {args.profile}: goals (ratios from this run)")
    for col in ("goal", "ratio", "met", "detail"):
        table.add_column(col)
    for g in goals(result):
        table.add_row(g.goal, f"{g.ratio:.2f}x", "yes" if g.met else "no", g.detail)
    table_console().print(table)
    table_console().print(f"report: {result.report}")
    return 0


def _paper_scale(args: argparse.Namespace) -> int:
    from askexpert_lab.bench.cost_bundle import CostSystem
    from askexpert_lab.bench.scale import ScaleProfile, run_paper_scale
    from askexpert_lab.bench.scale_report import ratios

    profile = ScaleProfile(devices=tuple(args.devices), images=args.scale_images,
                           sweep_images=min(args.scale_images, max(args.scale_images // 2, 1)))
    result = run_paper_scale(output_dir=Path(args.output_dir), results_dir=Path(args.results) / "paper-scale",
                             profile=profile, fresh=args.fresh, edge_mode=args.edge_mode,
                             server_profile=args.server_profile, console=log_console(),
                             system=CostSystem(generalist_weights=args.generalist_weights,
                                               expert_weights=args.expert_weights))
    table = Table(title=f"paper scale at {100 * profile.headline_rate:.0f}% offloaded: collaborative against the "
                        "paper's ratios (0.55x latency vs edge execution, 0.54x energy vs full offload)")
    for col in ("device", "link", "latency vs edge execution", "latency vs medium on edge",
                "energy vs full offload", "near-edge energy vs full offload"):
        table.add_column(col)
    for dev in profile.devices:
        for link in profile.links:
            q = ratios(result, dev, link, profile.headline_rate)
            table.add_row(dev, link, f"{q['latency_vs_edge_execution']:.2f}x", f"{q['latency_vs_edge_general']:.2f}x",
                          f"{q['energy_vs_full_offload']:.2f}x", f"{q['near_edge_energy_vs_full_offload']:.2f}x")
    table_console().print(table)
    table_console().print(f"report: {result.report} (weights {result.system['weights']}; "
                          "accuracy not measured at this scale)")
    return 0


def register(sub) -> None:
    """The ``askexpert bench`` command and its flags."""
    p = sub.add_parser("bench", help="baselines, sweeps and a report with plots (resumable)",
                       description="Run every baseline (edge only, edge execution, full offload, collaborative "
                       "static and progressive) over the same test images and link, sweep tau and k, link presets "
                       "and concurrent clients, and write results/<date>-<host>-<profile>.json plus a Markdown "
                       "report with PNG plots. quick: demo-sized models, <= 20 min on 2 CPU cores; full: the full "
                       "recipes. Interrupted runs resume at the first missing measurement.")
    p.add_argument("--profile", choices=["quick", "full", "paper-scale"], default="quick",
                   help="paper-scale: DeiT-Tiny on the emulated edge devices, DeiT-Small experts on the server, "
                   "224x224 images, untrained weights unless given; costs only (about 18 min at --scale-images 150 "
                   "on 2 CPU cores)")
    p.add_argument("--devices", nargs="+", default=["rpi4", "snapdragon-820"],
                   help="paper-scale: the emulated edge devices (costs/profiles.yaml edge_speeds)")
    p.add_argument("--scale-images", type=int, default=150,
                   help="paper-scale: images a measurement at 30%% offload and of the baselines (half at other rates)")
    p.add_argument("--generalist-weights", type=Path, help="paper-scale: DeiT-Tiny weights file (default: untrained)")
    p.add_argument("--expert-weights", type=Path,
                   help="paper-scale: DeiT-Small weights file for the experts and general model (default: untrained)")
    p.add_argument("--output-dir", default="runs", help="models and cached measurements go to OUTPUT_DIR/bench-PROFILE")
    p.add_argument("--results", default="results", help="where the JSON and the report go")
    p.add_argument("--fresh", action="store_true", help="measure again (models are still reused)")
    p.add_argument("--edge-profile", help="energy profile of the edge (costs/profiles.yaml; default: the emulated "
                   "device's, else raspberry-pi-4)")
    add_edge_device_flags(p, "--edge-device")
    p.add_argument("--server-profile", help="power profile of the near-edge server (costs/profiles.yaml; default: "
                   "h100-batch1 where the experts run on a GPU, epyc-9654-core where they run on this CPU)")
    p.add_argument("--radio", default="wifi", help="network profile of the edge radio")
    p.add_argument("--server-device", default="host", help="pace the expert servers to a near-edge device (h100, "
                   "jetson-agx-orin; the test images answered ahead) and price them by its model; host (default): "
                   "this host's speed at --server-profile's power")
    p.set_defaults(func=cmd_bench)
