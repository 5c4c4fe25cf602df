"""The ``askexpert`` command line: one module a command, its parser beside its handler; each parses
arguments and calls the library, nothing else."""

from __future__ import annotations

import argparse
import sys

import askexpert
from askexpert.cli import (
    bench,
    build_system,
    data,
    datasets,
    demo,
    edge,
    evaluate,
    evaluate_system,
    export,
    export_onnx,
    load,
    models,
    partition,
    plan,
    pretrain,
    serve,
    testbed,
    train,
)
from askexpert.cli._common import exact_parser
from askexpert.errors import AskExpertError

EPILOG = """\
examples:
  askexpert demo                                    train, bundle, serve and stream the demo system
  askexpert train generalist --config configs/generalist-fmnist.yaml
  askexpert train generalist --epochs 3 --set data.train_subset=5000 --name quick
  askexpert eval runs/quick                          top-1/top-5, per-class accuracy, confusion matrix
  askexpert build-system runs/g runs/experts --out system    one deployable bundle (system.json + ONNX + experts)
  askexpert plan system --edge-device rpi4 --link lte   which mode pays there: edge only, offload, collaborate
  askexpert serve system                             the bundle's experts over HTTP (/v1 and the OIP's /v2)
  askexpert export triton system --out repo          the experts as a Triton model repository
  askexpert edge system --server http://127.0.0.1:8000 --input photos/    the edge (no torch needed)
  askexpert models                                   presets with parameters and FLOPs
  askexpert datasets                                 which datasets are available here

Errors are one line naming the fix; the exit status is 2 for a user error.
"""

COMMANDS = (demo, train, testbed, partition, evaluate_system, build_system, plan, serve, edge, export, export_onnx,
            bench, evaluate, models, datasets, data, pretrain, load)

FULL_INSTALL = {"torch", "torchvision", "timm", "safetensors", "fastapi", "uvicorn", "matplotlib", "onnx",
                "onnxscript", "prometheus_client"}  # what only training, serving and the bench need


def build_parser() -> argparse.ArgumentParser:
    """The command line: each command's module adds its parser (``register``), in the order help lists them."""
    parser = argparse.ArgumentParser(
        prog="askexpert", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Collaborative ViT inference: an edge generalist asks near-edge experts when unsure.",
    )
    parser.add_argument("--version", action="version", version=f"askexpert {askexpert.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=exact_parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AskExpertError as err:
        print(f"askexpert: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in FULL_INSTALL:
            print(f"askexpert: error: '{args.command}' needs {err.name}, which the slim edge install leaves out -- "
                  "fix: pip install 'askexpert[all]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        hint = {"train": "; the run continues with --resume", "edge": "; the answers so far are kept: add --resume"}
        print(f"askexpert: interrupted{hint.get(args.command, '')}", file=sys.stderr)
        return 130
