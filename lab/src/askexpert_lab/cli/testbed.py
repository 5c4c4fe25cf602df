"""The ``askexpert testbed`` command: its parser and its handler."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from askexpert.cli._common import exact_parser


def cmd_testbed_check(args) -> int:
    from askexpert.costs.references import refresh_features
    from askexpert_lab.bench.machine import describe, machine_info
    from askexpert_lab.testbed.check import run_check

    console = Console(stderr=True)
    if args.refresh:
        with console.status("exporting the published models and reading their graphs ...") as status:
            path = refresh_features(lambda name: status.update(f"exporting and reading {name} ..."))
        console.log(f"wrote {path}")
        from askexpert.costs.device_model import reference_features

        reference_features.cache_clear()
    result = run_check(args.device or None, runs=args.runs, out_dir=args.out, emulate=not args.no_emulate,
                       machine=describe(machine_info()), log=console.log)
    for p in result["profiles"]:
        table = Table(title=f"{p['device']}: device model against {len(p['models'])} published figures"
                      + (f" (caveat: {p['caveat']})" if p["caveat"] else ""))
        for col in ("model", "published ms", "emulated ms", "in-sample", "leave-one-out"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for m, r in p["models"].items():
            emu = f"{r['emulated_ms']:.1f}" if r["emulated_ms"] is not None else "-"
            table.add_row(m, f"{r['published_ms']:.1f}", emu, f"{r['predicted_ms']:.1f} ({r['error_pct']:+.1f}%)",
                          f"{r['loo_ms']:.1f} ({r['loo_error_pct']:+.1f}%)")
        Console().print(table)
        w = p["within"]
        print(f"  within +/-10% in-sample: {w['in_sample']} of {w['of']}; within +/-25% leave-one-out: "
              f"{w['leave_one_out']} of {w['of']}"
              + (f"; not emulated: {p['not_emulated']}" if p["not_emulated"] else ""))
        for m, r in p["paper_models"].items():
            print(f"  {m} at 224 predicted: {r['predicted_ms']:.0f} ms")
    if args.out:
        print(f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 0


def register(sub) -> None:
    """The ``askexpert testbed check`` command and its flags."""
    p = sub.add_parser("testbed", help="the emulated edge's device models against their published figures")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact_parser)
    c = tsub.add_parser("check", help="each published model: its figure, the device model in-sample and leave-one-"
                        "out, and its latency on the emulated edge",
                        description="For every edge profile with a published per-model table (costs/profiles.yaml): "
                        "fit the device model, predict each published model in-sample and leave-one-out, run its "
                        "graph on the emulated edge, and predict DeiT-Tiny and DeiT-Small. The first run exports the "
                        "published models (about 1.5 GB under ~/.cache/askexpert/reference; needs torch).")
    c.add_argument("--device", action="append", help="a profile (repeatable; default: every profile with a table)")
    c.add_argument("--runs", type=int, default=3, help="timed runs a model on the emulated edge (median; default 3)")
    c.add_argument("--out", type=Path, help="write summary.json and summary.md here")
    c.add_argument("--no-emulate", action="store_true", help="the fit and its validation only")
    c.add_argument("--refresh", action="store_true",
                   help="export the published models again and rewrite costs/reference_graphs.json")
    c.set_defaults(func=cmd_testbed_check)
