"""The ``askexpert pretrain`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from askexpert.cli._common import log_console, table_console


def cmd_pretrain(args: argparse.Namespace) -> int:
    from askexpert.training.pretrain import pretrain

    result = pretrain(args.model, pool=args.pool, epochs=args.epochs, lr=args.lr, seed=args.seed, out=args.out,
                      overrides=list(args.set or []), console=log_console(), fresh=args.fresh, commit=args.commit,
                      budget_min=args.budget_min)
    if result.weights is None:
        table_console().print(f"{result.model} stopped after epoch {result.stopped_after}/{result.epochs} at its "
                              f"budget of {args.budget_min:g} min: unfinished"
                              + (" (its state committed in starts/: commit it with git)" if args.commit else "")
                              + "\ngo on: the same command again")
        return 0
    state = ("the committed start" if result.committed is not None and result.reused else
             "reused" if result.reused else f"trained in {result.seconds / 60:.1f} min")
    if result.committed is not None and not result.reused:
        state += f", committed as {result.committed.path()} (sha256 {result.committed.sha256[:12]}): commit it with git"
    table_console().print(f"{result.model} pretrained on {result.pool} ({result.epochs} epochs, {state}): "
                          f"{result.val_top1:.2f}% top-1 on the pool's validation split\n"
                          f"weights: {result.weights}\nstart from it: --set model.pretrained_file={result.weights}")
    return 0


def register(sub) -> None:
    """The ``askexpert pretrain`` command and its flags."""
    p = sub.add_parser("pretrain", help="a pretrained start, offline: train a model on a disjoint pool of classes",
                       description="Train MODEL on every class of a pretraining pool (default han100-pool: 1,000 "
                       "characters han100 does not hold) and print the weights file that model.pretrained_file "
                       "and experts.init_from: pretrained read. A start committed in the repository's starts/ (same "
                       "model, epochs, lr and seed) is reused, checked against its sha256; else a finished run in the "
                       "cache; else a committed unfinished state is resumed.")
    p.add_argument("model", help="a model preset or timm name (e.g. vit-mini-expert-32g)")
    p.add_argument("--pool", default="han100-pool")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs on the pool (default 20; 5 leave the medium model near chance)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run directory (default: ~/.cache/askexpert/pretrained/POOL/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override of the run config")
    p.add_argument("--commit", action="store_true",
                   help="keep the result in starts/ (float16 weights + manifest; an unfinished run's state)")
    p.add_argument("--budget-min", type=float, metavar="MIN",
                   help="stop at the last epoch boundary within MIN minutes (resumable: run it again to go on)")
    p.add_argument("--fresh", action="store_true", help="train from the start: reuse and resume nothing")
    p.set_defaults(func=cmd_pretrain)
