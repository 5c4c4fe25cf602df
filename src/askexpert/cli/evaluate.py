"""The ``askexpert evaluate`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import log_console, table_console


def cmd_eval(args: argparse.Namespace) -> int:
    from askexpert.training.evaluate import evaluate_checkpoint

    kw = dict(split=args.split, data=args.data, data_root=args.data_root, device=args.device,
              batch_size=args.batch_size, save_logits=args.save_logits, console=log_console())
    console = table_console()
    if (args.checkpoint / "partition.json").is_file():  # an expert run: every expert, one row each
        from askexpert.models.runs import open_expert_run

        stems = [c.stem for c in open_expert_run(args.checkpoint).checkpoints]
        table = Table(title=f"experts of {args.checkpoint} on {args.split}")
        for col in ("expert", "classes", "subset %", "subset images", "'other' recall %", "top-1 with 'other' %"):
            table.add_column(col, justify="left" if col == "classes" else "right")
        for stem in stems:
            d = stem.parent
            out = args.out_dir / d.name if args.out_dir is not None else None
            report = evaluate_checkpoint(stem, out_dir=out, **kw)
            x = report.expert
            other = "-" if x["other_recall"] is None else f"{x['other_recall']:.2f}"
            table.add_row(d.name, ", ".join(x["classes"]), f"{x['subset_accuracy']:.2f}", str(x["subset_samples"]),
                          other, f"{report.metrics['top1']:.2f}")
        console.print(table)
        console.print(f"wrote {args.split}.json and {args.split}-confusion.png under each EXPERT/eval"
                      if args.out_dir is None else f"wrote {args.out_dir}/expert-*/{args.split}.json")
        return 0
    report = evaluate_checkpoint(args.checkpoint, out_dir=args.out_dir, **kw)
    m = report.metrics
    title = f"{report.model_name} on {report.dataset} {args.split}: top-1 {m['top1']:.2f}%, top-5 {report.top5:.2f}%"
    if report.expert is not None:
        x = report.expert
        other = "" if x["other_recall"] is None else f", 'other' recall {x['other_recall']:.2f}%"
        title = (f"expert {x['expert']} ({report.model_name}) on {report.dataset} {args.split}: its classes "
                 f"{x['subset_accuracy']:.2f}% ({x['subset_samples']} images){other}; top-1 over its outputs "
                 f"{m['top1']:.2f}%")
    table = Table(title=f"{title}, {m['samples']} images")
    table.add_column("class")
    table.add_column("accuracy %", justify="right")
    table.add_column("support", justify="right")
    for row in m["per_class"]:
        table.add_row(row["class"], f"{row['accuracy']:.2f}", str(row["support"]))
    console.print(table)
    console.print(f"wrote {report.out_dir}/{args.split}.json, {args.split}-confusion.png"
                  + (f", {args.split}-logits.safetensors" if args.save_logits else ""))
    return 0


def register(sub) -> None:
    """The ``askexpert eval`` command and its flags."""
    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, per-class accuracy, confusion matrix",
                       description="Evaluate a checkpoint on a split of its dataset (or another dataset with "
                       "the same classes). Writes SPLIT.json and SPLIT-confusion.png. An expert is evaluated "
                       "on its classes plus 'other' (every other image): its subset accuracy and 'other' recall; "
                       "an expert run directory evaluates each of its experts.",
                       epilog="examples: askexpert eval runs/generalist; askexpert eval runs/experts; "
                       "askexpert eval runs/experts/expert-1 --split val")
    p.add_argument("checkpoint", type=Path, help="run directory (a model's, or an expert run's), or a checkpoint's "
                   ".json / .safetensors file")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-root", type=Path, help="directory holding the dataset files")
    p.add_argument("--out-dir", type=Path, help="output directory (default: CHECKPOINT_DIR/eval)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--save-logits", action="store_true", help="also save logits and labels (safetensors)")
    p.set_defaults(func=cmd_eval)
