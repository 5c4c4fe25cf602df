"""The ``askexpert train`` command: its parser and its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from askexpert.cli._common import exact_parser, log_console, table_console


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """Shortcut flags as ``section.key=value`` overrides, after the explicit ``--set`` ones."""
    out = list(args.set or [])
    for flag, key in (("name", "name"), ("output_dir", "output_dir"), ("data", "data.name"),
                      ("data_root", "data.root"), ("model", "model.name"), ("epochs", "train.epochs"),
                      ("batch_size", "train.batch_size"), ("lr", "train.lr"), ("device", "train.device"),
                      ("seed", "train.seed"), ("threads", "train.threads")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--name", help="run name: the run directory is OUTPUT_DIR/NAME")
    p.add_argument("--output-dir", help="parent of run directories (default: runs)")
    p.add_argument("--data", help="dataset: fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    p.add_argument("--data-root", help="directory holding the dataset files (only place searched)")
    p.add_argument("--model", help="model preset or timm model name (see: askexpert models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted run of the same config")
    group.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")


def _this_process_output(cfg):
    """Under torchrun, processes other than 0 write their copy of the run into a scratch directory."""
    from askexpert.training.distributed import scratch_output_dir, this_process

    return cfg if this_process().main else cfg.model_copy(update={"output_dir": scratch_output_dir()})


def cmd_train_generalist(args: argparse.Namespace) -> int:
    from askexpert.config import load_run_config
    from askexpert.training import train_generalist

    cfg = _this_process_output(load_run_config(args.config, _run_overrides(args)))
    result = train_generalist(cfg, resume=args.resume, overwrite=args.overwrite, console=log_console())
    _print_metrics(result.metrics, f"{cfg.model.name} on {cfg.data.name}", result.checkpoint)
    return 0


def cmd_train_experts(args: argparse.Namespace) -> int:
    from askexpert.training.experts import experts_run_config, experts_run_defaults, train_experts

    overrides = _run_overrides(args)
    for flag, key in (("strategy", "experts.strategy"), ("partition", "experts.partition"), ("init", "experts.init"),
                      ("passes", "experts.passes"), ("init_from", "experts.init_from")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = _this_process_output(experts_run_config(args.config, overrides, base=experts_run_defaults()))
    result = train_experts(cfg, resume=args.resume, overwrite=args.overwrite, console=log_console())
    if not result.experts:  # the general model
        from askexpert.models import read_meta

        meta = read_meta(result.run_dir)
        _print_metrics(meta.metrics, f"general model {cfg.model.name} on {cfg.data.name}", result.run_dir / "model")
        return 0
    table = Table(title=f"{cfg.experts.strategy} experts from {cfg.experts.init_from} weights in {result.run_dir}")
    for col in ("expert", "classes", "val subset %", "test subset %", "test 'other' recall %", "steps", "images seen",
                "teacher passes"):
        table.add_column(col)
    for m in result.experts:
        other, budget = m.test.other_recall, m.budget
        table.add_row(str(m.expert), ", ".join(m.names), f"{m.val.subset_accuracy:.2f}",
                      f"{m.test.subset_accuracy:.2f}", "-" if other is None else f"{other:.1f}",
                      str(budget.steps) if budget else "-", str(m.images_seen or "-"),
                      str(budget.teacher_images) if budget else "-")
    table_console().print(table)
    return 0


def _print_metrics(metrics: dict, title: str, checkpoint: Path) -> None:
    table = Table(title=title)
    for col in ("split", "samples", "top-1 %", "top-5 %", "NLL"):
        table.add_column(col, justify="right")
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            top5 = next((v for k, v in m.items() if k.startswith("top") and k != "top1"), float("nan"))
            table.add_row(split, str(m["samples"]), f"{m['top1']:.2f}", f"{top5:.2f}", f"{m['nll']:.3f}")
    console = table_console()
    console.print(table)
    train = metrics.get("train", {})
    if train:
        console.print(f"trained {train['epochs']} epochs at {train['images_per_s']:.0f} img/s on {train['device']} "
                      f"({train['seconds'] / 60:.1f} min); checkpoint: {checkpoint}.safetensors")


def register(sub) -> None:
    """The ``askexpert train`` command and its flags."""
    from askexpert.config import INIT_FROM, STRATEGIES

    p = sub.add_parser("train", help="train models (generalist, general model, experts)",
                       description="Train a model into a run directory (resolved config, logs, metrics, "
                       "checkpoint).")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact_parser)
    g = tsub.add_parser("generalist", help="train the edge generalist",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the small edge model on every class. Config: YAML file plus "
                        "overrides; the run directory gets config.yaml, train.log, metrics.jsonl, "
                        "model.safetensors + model.json and eval/ reports.",
                        epilog="example: askexpert train generalist --config configs/generalist-fmnist.yaml")
    _add_run_flags(g)
    g.set_defaults(func=cmd_train_generalist)

    x = tsub.add_parser("experts", help="train the general model, or static / progressive experts",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="--strategy general trains the medium model on every class (the common "
                        "starting point of the experts, and the everything-offloaded baseline). --strategy static "
                        "or progressive trains one expert per partition subset, from --init (the general run), "
                        "with the same image budget (--passes over each subset).",
                        epilog="examples:\n"
                        "  askexpert train experts --strategy general --name general --epochs 15\n"
                        "  askexpert partition runs/generalist --experts 3\n"
                        "  askexpert train experts --strategy progressive --init runs/general \\\n"
                        "      --partition runs/generalist/partition-confusion-3.json --name progressive")
    _add_run_flags(x)
    x.add_argument("--strategy", choices=list(STRATEGIES))
    x.add_argument("--init-from", choices=list(INIT_FROM),
                   help="the experts' starting weights: general (the trained --init model; the default), scratch "
                   "(random, from experts.init_seed; the same for every strategy) or pretrained (timm's weights)")
    x.add_argument("--partition", type=Path, help="partition file (askexpert partition)")
    x.add_argument("--init", type=Path, help="run directory of the general model the experts start from")
    x.add_argument("--passes", type=float, help="image budget per expert, in passes over its subset")
    x.set_defaults(func=cmd_train_experts)
