"""The ``askexpert pretrain`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from askexpert.cli._common import log_console, table_console


def cmd_pretrain(args: argparse.Namespace) -> int:
    from askexpert.training.pretrain import pretrain

    result = pretrain(args.model, pool=args.pool, epochs=args.epochs, lr=args.lr, seed=args.seed, out=args.out,
                      overrides=list(args.set or []), console=log_console())
    state = "reused" if result.reused else f"trained in {result.seconds / 60:.1f} min"
    table_console().print(f"{result.model} pretrained on {result.pool} ({result.epochs} epochs, {state}): "
                          f"{result.val_top1:.2f}% top-1 on the pool's validation split\n"
                          f"weights: {result.weights}\nstart from it: --set model.pretrained_file={result.weights}")
    return 0


def register(sub) -> None:
    """The ``askexpert pretrain`` command and its flags."""
    p = sub.add_parser("pretrain", help="a pretrained start, offline: train a model on a disjoint pool of classes",
                       description="Train MODEL on every class of a pretraining pool (default han100-pool: 1,000 "
                       "characters han100 does not hold) and print the weights file that model.pretrained_file "
                       "and experts.init_from: pretrained read. Cached: a finished run is reused.")
    p.add_argument("model", help="a model preset or timm name (e.g. vit-mini-expert-32g)")
    p.add_argument("--pool", default="han100-pool")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs on the pool (default 20; 5 leave the medium model near chance)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run directory (default: ~/.cache/askexpert/pretrained/POOL/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override of the run config")
    p.set_defaults(func=cmd_pretrain)
