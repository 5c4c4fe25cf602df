"""The ``askexpert datasets`` command: its parser and its handler."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from askexpert.cli._common import table_console
from askexpert.errors import AskExpertError


def cmd_datasets(args: argparse.Namespace) -> int:
    from askexpert.config import DataConfig
    from askexpert.data import DATASETS, load_dataset
    from askexpert.data.registry import locate_dataset

    console = table_console()
    if args.name:
        splits = load_dataset(DataConfig(name=args.name, root=args.data_root, download=not args.no_download))
        summary = splits.summary()
        summary.pop("decoded_as", None)  # decoded at a default size here; the presets' inputs follow
        console.print_json(json.dumps({**summary, "class_names": splits.class_names,
                                       "coarse_names": splits.coarse_names}))
        if splits.files is not None:
            _print_preset_inputs(splits.files, console)
        return 0
    table = Table(title="datasets (askexpert datasets NAME loads one and shows its splits)")
    table.add_column("name")
    table.add_column("description")
    table.add_column("available here")
    for name, description in DATASETS.items():
        where = "-"
        if ":" not in name:
            try:
                where = str(locate_dataset(DataConfig(name=name, download=False)))
            except AskExpertError:
                where = "no (downloads on first use where a network exists)"
        table.add_row(name, description, where)
    console.print(table)
    return 0


def _print_preset_inputs(files, console: Console) -> None:
    """What each preset's input turns an image folder's files into (decoding follows the model)."""
    from askexpert.models import PRESETS

    by_input: dict[tuple[int, int], list[str]] = {}
    for preset in PRESETS.values():
        by_input.setdefault((preset.channels, preset.size), []).append(preset.name)
    table = Table(title=f"what each model input makes of these files ({files.describe()})")
    for col in ("presets", "input", "channels", "size"):
        table.add_column(col)
    side = files.side
    for (channels, size), names in sorted(by_input.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if channels == files.channels:
            conv = "as they are"
        elif channels == 3:
            conv = "grey copied to R, G and B"
        else:
            conv = "colour to grey (ITU-R 601 luma)"
        scale = "kept" if side == size else (f"upscaled from {side} px" if side < size else
                                             f"downscaled from {side} px (shorter side, then centre crop)")
        table.add_row(", ".join(names), f"{channels}x{size}x{size}", conv, scale)
    console.print(table)


def register(sub) -> None:
    """The ``askexpert datasets`` command and its flags."""
    p = sub.add_parser("datasets", help="list datasets and where they are found, or load one",
                       description="Without NAME: the registered datasets and whether their files are "
                       "here. With NAME: load it (downloading where allowed) and print its splits.")
    p.add_argument("name", nargs="?", help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(func=cmd_datasets)
