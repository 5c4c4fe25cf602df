"""Run directories: one per training run, holding the resolved config, logs, metrics and weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from askexpert.config import RunConfig
from askexpert.errors import ConfigError

CONFIG_FILE = "config.yaml"


def prepare_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool) -> Path:
    """Create (or reopen, when resuming) ``cfg.run_dir`` and write the resolved config into it.

    A run directory that already holds a run is never silently reused: resuming requires the same
    config, and starting again requires ``overwrite``. A directory whose run failed before training
    began (a bad flag, a missing file) holds no run: it is simply started again.
    """
    run_dir = cfg.run_dir
    existing = run_dir / CONFIG_FILE
    if existing.is_file() and not overwrite and run_started(run_dir):
        if not resume:
            raise ConfigError(
                f"run directory {run_dir} already holds a run",
                fix="pass --resume to continue it, --overwrite to start again, or choose another --name",
            )
        saved = yaml.safe_load(existing.read_text())
        current = cfg.model_dump(mode="json")
        changed = _diff(saved, current)
        if changed:
            raise ConfigError(
                f"cannot resume {run_dir}: its config differs in {', '.join(changed)}",
                fix="resume with the same config, or pass --overwrite to start again",
            )
        return run_dir
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    existing.write_text(cfg.to_yaml())
    return run_dir


def run_started(run_dir: Path) -> bool:
    """Whether training began in ``run_dir``: an epoch's state or log, or a finished model, of the run or
    of one of its experts."""
    marks = ("state.json", "metrics.jsonl", "model.json")
    return any((run_dir / m).is_file() for m in marks) or any(
        (d / m).is_file() for d in run_dir.glob("expert-*") for m in marks)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
