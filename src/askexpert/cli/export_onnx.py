"""The ``askexpert export-onnx`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from askexpert.cli._common import table_console


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from askexpert.models.checkpoint import checkpoint_stem
    from askexpert.models.onnx_export import export_onnx

    out = args.out or checkpoint_stem(args.checkpoint).with_suffix(".onnx")
    info = export_onnx(args.checkpoint, out, opset=args.opset)
    table_console().print(f"wrote {info['path']} (opset {info['opset']}, {info['export_seconds']:.1f} s); "
                          f"largest difference from torch on 5 random images: {info['max_abs_diff']:.2e}")
    return 0


def register(sub) -> None:
    """The ``askexpert export-onnx`` command and its flags."""
    p = sub.add_parser("export-onnx", help="export a generalist to ONNX for ONNX Runtime on the edge",
                       description="Write an ONNX graph that takes uint8 images [N, C, H, W] (normalisation "
                       "inside) with class names in its metadata; checked against torch before it is kept.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, help="default: next to the checkpoint, model.onnx")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export_onnx)
