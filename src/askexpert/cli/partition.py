"""The ``askexpert partition`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import table_console


def cmd_partition(args: argparse.Namespace) -> int:
    from askexpert.training.partition import make_partition

    part = make_partition(args.generalist, args.num_experts, method=args.method, file=args.file,
                          max_size=args.max_size, min_size=args.min_size, overlap=args.overlap, device=args.device,
                          seed=args.seed, holders=args.holders)
    out = args.out or (args.generalist if args.generalist.is_dir() else args.generalist.parent) / (
        f"partition-{args.method}-{len(part.experts)}.json")
    part.save(out)
    table = Table(title=f"partition ({part.method}{', with overlap' if part.overlap else ''}): {out}")
    table.add_column("expert")
    table.add_column("size", justify="right")
    table.add_column("classes")
    for e, names in part.table():
        table.add_row(str(e), str(len(part.experts[e])), names)
    table_console().print(table)
    return 0


def register(sub) -> None:
    """The ``askexpert partition`` command and its flags."""
    from askexpert.contract.schema import DEFAULT_MIN_SIZE

    p = sub.add_parser("partition", help="group classes into expert subsets",
                       description="Group the classes into expert subsets: from the generalist's confusion on the "
                       "validation split (agglomerative, size-bounded), from coarse labels (CIFAR-100 "
                       "superclasses), dealt at random (seeded: the control for a confusion partition) or from a "
                       "YAML file of class lists.")
    p.add_argument("generalist", type=Path, help="run directory (or checkpoint) of the generalist")
    p.add_argument("--num-experts", type=int, default=3, help="number of experts (default 3)")
    p.add_argument("--method", choices=["confusion", "coarse", "random", "file"], default="confusion")
    p.add_argument("--seed", type=int, default=0, help="with --method random: the deal's seed")
    p.add_argument("--file", type=Path, help="with --method file: YAML with experts: [[class, ...], ...]")
    p.add_argument("--max-size", type=int, help="most classes an expert may hold (default: 1.5 x the mean)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help=f"fewest classes an expert may hold (default {DEFAULT_MIN_SIZE}: no one-class expert, whose "
                   "subset accuracy is trivially 100%%, unless asked for with --min-size 1)")
    p.add_argument("--overlap", type=float, metavar="THRESHOLD",
                   help="a class also joins the other expert it is most confused with, above this affinity")
    p.add_argument("--holders", type=int, default=1, metavar="N",
                   help="overlapping subsets: each class is held by up to N experts, joining those it is most "
                   "confused with on validation (default 1: none; --overlap sets the least affinity)")
    p.add_argument("--out", type=Path, help="output file (default: GENERALIST/partition-METHOD-E.json)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_partition)
