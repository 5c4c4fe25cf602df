"""The ``askexpert`` command line: one module a command, its parser beside its handler; each parses
arguments and calls the library, nothing else."""

from __future__ import annotations

import argparse
import sys

import askexpert
from askexpert.cli import (
    build_system,
    datasets,
    edge,
    evaluate,
    evaluate_system,
    export,
    export_onnx,
    models,
    partition,
    plan,
    pretrain,
    serve,
    train,
)
from askexpert.cli._common import exact_parser
from askexpert.errors import AskExpertError
from askexpert.extensions import LAB_INSTALL, lab_commands

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

# Help lists the commands in this order; a name is the product's module, or a command the lab adds (its entry
# point in askexpert.extensions.COMMANDS), which without the lab says how to install it.
COMMANDS = ("demo", train, "testbed", partition, evaluate_system, build_system, plan, serve, edge, export, export_onnx,
            "bench", evaluate, models, datasets, "data", pretrain, "load")

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
    lab = lab_commands()
    for command in COMMANDS:
        if not isinstance(command, str):
            command.register(sub)
        elif command in lab:
            lab[command].register(sub)
        else:
            _lab_missing(sub, command)
    return parser


def _lab_missing(sub, name: str) -> None:
    """A lab command on an install without the lab: listed, and saying how to get it."""
    p = sub.add_parser(name, help=f"(the lab's: {LAB_INSTALL})", add_help=False, prefix_chars="\x01")
    p.add_argument("rest", nargs="*")  # whatever follows, options included: the command is not here to read it

    def missing(args: argparse.Namespace) -> int:
        raise AskExpertError(f"'askexpert {name}' is the lab's (askexpert-lab), which this install leaves out",
                             fix=LAB_INSTALL)
    p.set_defaults(func=missing)


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
