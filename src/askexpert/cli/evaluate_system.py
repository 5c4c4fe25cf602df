"""The ``askexpert evaluate-system`` command: its parser and its handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import add_rule_flags, table_console


def _headline_table(report, args: argparse.Namespace) -> Table:
    """The systems at the headline operating point: baselines, each expert set, the control rows."""
    table = Table(title=f"test accuracy, tau chosen on validation for {100 * args.offload:.0f}% offload, "
                        f"k {args.k or 'best on validation'} (--k)")
    for col in ("system", "k", "overall %", "on offloaded %", "offload %", "hit rate %", "'other' %", "expert load"):
        table.add_column(col, justify="right" if col != "system" else "left")
    b = report.baselines
    table.add_row("generalist alone", "-", f"{b['generalist'].accuracy:.2f}",
                  f"{b['generalist'].offloaded_accuracy:.2f}", "0", "-", "-", "-")
    table.add_row("general model alone (everything offloaded)", "-", f"{b['general'].accuracy:.2f}",
                  f"{b['general'].offloaded_accuracy:.2f}", "100", "-", "-", "-")
    rows = [(f"collaborative: {label}", row) for label, row in report.headline.items()]
    rows += [(f"{'upper bound' if label.endswith('oracle routing') else 'control'}: {label}", row)
             for label, row in report.controls.items()]
    for name, row in rows:
        t = row.test
        table.add_row(name, str(row.k), f"{t.accuracy:.2f}", f"{t.offloaded_accuracy_system:.2f}",
                      f"{t.offload_rate:.1f}", f"{t.routing_hit_rate:.1f}", f"{t.expert_other_rate:.1f}",
                      " / ".join(map(str, t.expert_load)))
    return table


def _subset_table(report) -> Table:
    """Every expert of every set on its own subset's test images."""
    widest = max(len(v) for v in report.subset_accuracy.values())
    subsets = Table(title="each expert on its own subset's test images (accuracy %)")
    subsets.add_column("experts")
    for e in range(widest):
        subsets.add_column(f"expert {e}", justify="right")
    subsets.add_column("mean", justify="right")
    for label, values in report.subset_accuracy.items():
        subsets.add_row(label, *(f"{v:.2f}" for v in values), *([""] * (widest - len(values))),
                        f"{sum(values) / len(values):.2f}")
    return subsets


def cmd_evaluate_system(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from askexpert.system.offline import GENERAL_AS_EXPERT, evaluate_system

    runs = {}
    for item in args.experts:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).name, item
        runs[label] = Path(path)
    report = evaluate_system(args.generalist, args.general, runs, ks=args.ks, rates=args.rates,
                             headline_rate=args.offload, headline_k=args.k, target_accuracy=args.target_accuracy,
                             confidence=args.confidence, fallback=args.fallback, device=args.device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=1))
    console = table_console()
    console.print(_headline_table(report, args))
    if report.subset_accuracy:
        console.print(_subset_table(report))
    grid = Table(title="sweep on test (rows: system and k; columns: target offload rate; cells: overall accuracy %)")
    grid.add_column("system")
    grid.add_column("k")
    for rate in args.rates:
        grid.add_column(f"{100 * rate:.0f}%", justify="right")
    for system in [*runs, GENERAL_AS_EXPERT]:
        for k in args.ks:
            grid.add_row(system, str(k), *(f"{report.row(system, k, rate).test.accuracy:.2f}" for rate in args.rates))
    console.print(grid)
    if args.target_accuracy is not None:
        acc = Table(title=f"least offloading reaching {args.target_accuracy:.2f}% on validation (results on test)")
        for col in ("system", "k", "tau", "offload % (val)", "val %", "offload % (test)", "test %"):
            acc.add_column(col)
        for r in report.grid:
            if r.target_accuracy is not None:
                acc.add_row(r.system, str(r.k), f"{r.tau:.3f}", f"{r.val.offload_rate:.1f}", f"{r.val.accuracy:.2f}",
                            f"{r.test.offload_rate:.1f}", f"{r.test.accuracy:.2f}")
        console.print(acc)
    if args.out:
        console.print(f"full report: {args.out}")
    return 0


def _k_or_best(text: str) -> int | None:
    if text == "best":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive k nor 'best'")
    return int(text)


def register(sub) -> None:
    """The ``askexpert evaluate-system`` command and its flags."""
    from askexpert.routing import DEFAULT_K

    p = sub.add_parser("evaluate-system", help="offline evaluation of the collaborative system over tau and k",
                       description="From the saved models (logits cached next to each checkpoint): the generalist "
                       "alone, the general model alone, and the collaborative system with each set of experts, for "
                       "a grid of target offload rates (tau chosen on validation) and k. Reports on test.")
    p.add_argument("generalist", type=Path, help="the generalist's run directory")
    p.add_argument("general", type=Path, help="the general model's run directory")
    p.add_argument("--experts", action="append", required=True, metavar="LABEL=RUN_DIR",
                   help="an expert run directory (repeatable), e.g. static=runs/static")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--offload", type=float, default=0.3, help="target offload rate of the headline table")
    p.add_argument("--k", default=DEFAULT_K, type=_k_or_best, metavar="K|best",
                   help=f"k of the headline table (default {DEFAULT_K}, as edge and build-system use; best: the best "
                   "k on validation); the sweep shows every --ks")
    p.add_argument("--target-accuracy", type=float, metavar="PERCENT",
                   help="also choose tau as the least offloading reaching this validation accuracy")
    add_rule_flags(p)
    p.add_argument("--out", type=Path, help="write the full report (JSON) here")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate_system)
