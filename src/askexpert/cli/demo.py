"""The ``askexpert demo`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import add_edge_device_flags, log_console, print_edge_summary, table_console


def cmd_demo(args: argparse.Namespace) -> int:
    from askexpert.demo import comparison, reading, run_demo
    from askexpert.runtime.link import parse_link

    console = log_console()
    console.rule("askexpert demo: collaborative inference on Fashion-MNIST, offline")
    result = run_demo(output_dir=Path(args.output_dir), fresh=args.fresh, limit=args.limit,
                      link=parse_link(args.link), edge_device=args.edge_device, edge_mode=args.edge_mode,
                      console=console)
    print_edge_summary(result.report, title="askexpert demo: collaborative", energy=result.energy)
    table = Table(title=f"what collaboration buys: the same {result.report.summary.samples} images on the "
                        f"{result.placement.label}, link {result.report.link}")
    table.add_column("metric")
    for row in result.systems:
        table.add_column(row.name, justify="right")
    for label, values in comparison(result):
        table.add_row(label, *values)
    table_console().print(table)
    for line in reading(result):
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
                   help="emulate a link on every offload: wifi (default), lte, 5g, none or rtt=20ms,bw=20mbit")
    add_edge_device_flags(p, "--edge-device", default="rpi4")
    p.set_defaults(func=cmd_demo)
