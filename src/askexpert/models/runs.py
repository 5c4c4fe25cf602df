"""An expert run directory read in one place: its partition, each expert's checkpoint and the general
model it started from. Build time (calibration, ``build-system``, ``eval``) and a server given a run
directory for experiments both read it here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from askexpert.contract.schema import Partition
from askexpert.errors import ConfigError
from askexpert.models.checkpoint import StoredCheckpoint, checkpoint_stem, open_checkpoint


@dataclass(frozen=True)
class ExpertRun:
    root: Path
    partition: Partition
    checkpoints: list[StoredCheckpoint]  # expert e's checkpoint, its metadata read once
    init: Path | None  # the general model the experts started from (experts.json's "init"), if any


def open_expert_run(run_dir: Path) -> ExpertRun:
    """The expert run at ``run_dir``, every expert trained, or the error naming what to run."""
    run_dir = Path(run_dir)
    if not (run_dir / "partition.json").is_file():
        raise ConfigError(f"{run_dir} is neither a system bundle nor an expert run (no system.json, no "
                          "partition.json)", fix="give a bundle (askexpert build-system) or a directory made "
                          "by: askexpert train experts --strategy static|progressive")
    partition = Partition.load(run_dir / "partition.json")
    checkpoints = []
    for e in range(len(partition.experts)):
        stem = checkpoint_stem(run_dir / f"expert-{e}")
        if not stem.with_suffix(".json").is_file():
            raise ConfigError(f"{run_dir} has no trained expert {e}", fix="finish: askexpert train experts --resume")
        checkpoints.append(open_checkpoint(stem))
    summary = run_dir / "experts.json"
    init = json.loads(summary.read_text()).get("init") if summary.is_file() else None
    return ExpertRun(run_dir, partition, checkpoints, Path(init) if init else None)
