"""The ``askexpert models`` command: its parser and its handler."""

from __future__ import annotations

import argparse

from rich.table import Table

from askexpert.cli._common import table_console


def cmd_models(args: argparse.Namespace) -> int:
    console = table_console()
    if args.timm is not None:
        import timm

        names = timm.list_models(args.timm or "*")
        console.print("\n".join(names) if names else f"no timm model matches {args.timm!r}")
        return 0
    from askexpert.models import PRESETS
    from askexpert.models.info import describe_preset

    table = Table(title="model presets (any timm model name works too: askexpert models --timm 'vit_*')")
    for col in ("preset", "role", "timm model", "input", "params", "MFLOPs/img", "weights"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("params", "MFLOPs/img") else "left")
    for preset in PRESETS.values():
        info = describe_preset(preset, num_classes=args.classes)
        table.add_row(preset.name, preset.role, preset.timm_name, info["input"], f"{info['parameters'] / 1e6:.2f}M",
                      f"{info['flops'] / 1e6:.1f}", "ImageNet" if preset.pretrained else "scratch")
    console.print(table)
    return 0


def register(sub) -> None:
    """The ``askexpert models`` command and its flags."""
    p = sub.add_parser("models", help="list model presets with parameter counts and FLOPs",
                       description="List the presets (edge and expert sizes per input scale) with their "
                       "parameter counts and FLOPs per image, or timm model names.")
    p.add_argument("--classes", type=int, default=10, help="output classes assumed for the counts")
    p.add_argument("--timm", nargs="?", const="", metavar="PATTERN", help="list timm model names instead")
    p.set_defaults(func=cmd_models)
