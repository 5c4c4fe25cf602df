"""The ``askexpert demo`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import add_edge_device_flags, log_console, print_edge_summary, table_console


def cmd_demo(args: argparse.Namespace) -> int:
    from askexpert.runtime.link import parse_link
    from askexpert_lab.demo import comparison, plan_line, reading, run_demo

    console = log_console()
    console.rule("askexpert demo: collaborative inference on Fashion-MNIST, offline")
    result = run_demo(output_dir=Path(args.output_dir), fresh=args.fresh, limit=args.limit,
                      link=parse_link(args.link), second_link=parse_link(args.second_link),
                      server_device=args.server_device, edge_device=args.edge_device, edge_mode=args.edge_mode,
                      console=console)
    print_edge_summary(result.report, title="askexpert demo: collaborative", energy=result.energy)
    for regime in result.regimes:
        table = Table(title=f"{regime.link}: the same {result.report.summary.samples} images on the "
                            f"{result.placement.label}, server paced to {result.server_device}")
        table.add_column("metric")
        for row in regime.systems:
            table.add_column(row.name, justify="right")
        for label, values in comparison(regime):
            table.add_row(label, *values)
        table_console().print(table)
        table_console().print(f"[bold]{plan_line(regime)}[/bold]")
        for line in reading(regime):
            table_console().print(f"collaborative {line}" if line.startswith("against") else line)
    table_console().print(f"[bold]edge[/bold]: {result.placement.describe()}")
    table_console().print(f"energy, modelled: edge {result.energy.edge_energy_source}; "
                          f"server {result.energy.server_label}")
    table_console().print(f"report: {result.report_dir / 'report.md'}; bundle: {result.bundle}")
    return 0


def register(sub) -> None:
    """The ``askexpert demo`` command and its flags."""
    p = sub.add_parser("demo", help="the collaborative system end to end on offline Fashion-MNIST",
                       description="Train (or reuse) a small generalist, general model and progressive experts on "
                       "Fashion-MNIST (a few minutes on 2 CPU cores), start the expert server on a free loopback "
                       "port, stream the test split through the edge runner over HTTP, print accuracy, offload "
                       "rate, latency and modelled energy, write a report into OUTPUT_DIR/demo/report, stop the "
                       "server.")
    p.add_argument("--output-dir", default="runs", help="parent of the demo directory (default: runs)")
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing the demo's models")
    p.add_argument("--limit", type=int, default=2000, help="test images to stream (default 2000)")
    p.add_argument("--link", default="wifi",
                   help="emulate a link on every offload: wifi (default), lte, 5g, none, rtt=20ms,bw=20mbit or a "
                   "recorded trace:UP,DOWN")
    p.add_argument("--second-link", default="lte", help="the second regime's link (default lte, where the decision "
                   "map recommends collaboration; none: one regime)")
    p.add_argument("--server-device", default="h100", help="pace the expert server to h100 (default), "
                   "jetson-agx-orin or host (this host's speed, priced as one EPYC core)")
    add_edge_device_flags(p, "--edge-device", default="rpi4")
    p.set_defaults(func=cmd_demo)
