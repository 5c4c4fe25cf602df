"""The ``askexpert data`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import exact_parser, log_console, table_console
from askexpert.errors import ConfigError


def cmd_data_build(args: argparse.Namespace) -> int:
    from askexpert.data import han
    from askexpert_lab.han import build as han_build

    if args.name != han.TASK:
        raise ConfigError(f"askexpert data build knows no dataset {args.name!r}",
                          fix=f"build {han.TASK} (the other datasets are files: askexpert datasets)")
    spec = han_build.TINY if args.tiny else han_build.FULL
    out = han_build.build(args.root, seed=args.seed, spec=spec, workers=args.workers, force=args.force,
                          console=log_console())
    manifest = han.read_manifest(out)
    table = Table(title=f"{han.TASK} in {out} (manifest.json says how it was made; samples.png shows it)")
    for col in ("part", "split", "classes", "images", "designs (fonts never shared between splits)"):
        table.add_column(col)
    for part, splits in manifest["splits"].items():
        classes = len(manifest["classes"] if part == "task" else manifest["pool_classes"])
        for split, designs in splits.items():
            images = manifest["files"][f"{part}-{split}.npz"]["images"]
            table.add_row(part, split, str(classes), f"{images:,}", ", ".join(designs))
    table_console().print(table)
    return 0


def register(sub) -> None:
    """The ``askexpert data build`` command and its flags."""
    p = sub.add_parser("data", help="build a dataset that is made by code (han100: Han characters from fonts)")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact_parser)
    b = dsub.add_parser("build", help="render han100 and its pretraining pool from Debian's font packages",
                        description="Render the han100 task (100 classes, 500/50/100 images a class, each split in "
                        "fonts of its own) and its 1,000-class pretraining pool, offline and deterministically from "
                        "--seed, into ROOT/han100 (default: the user cache). About 2 minutes on 2 cores.")
    b.add_argument("name", help="han100")
    b.add_argument("--root", type=Path, help="parent directory (default: $ASKEXPERT_DATA or ~/.cache/askexpert)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None, help="rendering processes (default: the CPU count)")
    b.add_argument("--tiny", action="store_true", help="10 classes and a 30-class pool, a few images each (tests)")
    b.add_argument("--force", action="store_true", help="build again over an existing build")
    b.set_defaults(func=cmd_data_build)
