"""The one pipeline from configs to a trained system: generalist -> general model -> partition -> experts.

Every step is resumable (a finished run is reused, an interrupted one continues), so the demo, the
bench, the reference table and the test fixtures all call :func:`train_system` and never repeat
the sequence. The bundle is written afterwards by :func:`askexpert.system.build.build_system`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from askexpert.config import RunConfig, load_run_config


@dataclass(frozen=True)
class ExpertsStep:
    """One set of experts to train from the general model: a label, a config and its overrides."""

    label: str
    config: str | None
    overrides: tuple[str, ...] = ()
    router: bool = False  # progressive draws follow the generalist's router (experts.router)
    init: str | None = None  # the label of one of PipelineSpec.other_generals to start from (None: the general model)
    partition: str | None = None  # the label of one of PipelineSpec.other_partitions (None: the main partition)


@dataclass(frozen=True)
class PipelineSpec:
    """Which configs make a system. ``common`` applies to every step; ``suffix`` is appended to every
    run name (and the partition file), so several seeds of one system live side by side."""

    generalist: str | None
    general: str | None
    experts: tuple[ExpertsStep, ...]
    common: tuple[str, ...] = ()
    generalist_overrides: tuple[str, ...] = ()
    general_overrides: tuple[str, ...] = ()
    n_experts: int = 3
    suffix: str = ""
    # further all-class models of the general model's architecture (label, config, overrides), trained after it:
    # other budgets (controls), or a shared all-class stage that experts start from (ExpertsStep.init)
    other_generals: tuple[tuple[str, str | None, tuple[str, ...]], ...] = ()
    partition_overrides: dict = field(default_factory=dict)  # make_partition's keywords (max_size, min_size, ...)
    other_partitions: tuple[tuple[str, dict], ...] = ()  # (label, make_partition's keywords): e.g. a random one


@dataclass
class TrainedSystem:
    generalist: Path
    general: Path
    partition: Path
    experts: dict[str, Path]
    other_generals: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # each step's wall time; a reused run's recorded training
    reused: list[str] = field(default_factory=list)


def recorded_train_seconds(run_dir: Path) -> float:
    """The training time a finished run recorded (every resumed part counted): an all-class model's
    ``metrics.json``, or the sum over a set of experts' ``experts.json``."""
    experts = run_dir / "experts.json"
    if experts.is_file():
        return sum(e.get("train_seconds", 0.0) for e in json.loads(experts.read_text())["experts"])
    return float(json.loads((run_dir / "metrics.json").read_text())["train"]["seconds"])


def _config(name: str | None, output_dir: Path, common: tuple[str, ...], overrides: tuple[str, ...], suffix: str,
            base: dict | None = None) -> RunConfig:
    cfg = load_run_config(name, [f"output_dir={output_dir}", *common, *overrides], base=base)
    return cfg.model_copy(update={"name": f"{cfg.name}{suffix}"}) if suffix else cfg


def train_system(spec: PipelineSpec, output_dir: Path, *, console: Console | None = None) -> TrainedSystem:
    """Train (or reuse, or resume) every model of ``spec`` under ``output_dir``."""
    from askexpert.training import train_generalist
    from askexpert.training.experts import experts_run_defaults, train_experts
    from askexpert.training.partition import make_partition

    output_dir = Path(output_dir)
    seconds: dict[str, float] = {}
    reused: list[str] = []

    def timed(label: str, cfg: RunConfig, marker: str, train):
        finished = (cfg.run_dir / marker).is_file()
        t0 = time.perf_counter()
        result = train(cfg)
        # a reused run took no time now: it reports the training time it recorded when it ran
        seconds[label] = recorded_train_seconds(result.run_dir) if finished else time.perf_counter() - t0
        if finished:
            reused.append(label)
        return result.run_dir

    gen = timed("generalist", _config(spec.generalist, output_dir, spec.common, spec.generalist_overrides,
                                      spec.suffix), "metrics.json",
                lambda c: train_generalist(c, resume=True, console=console))
    general = timed("general", _config(spec.general, output_dir, spec.common, spec.general_overrides, spec.suffix,
                                       experts_run_defaults()), "metrics.json",
                    lambda c: train_experts(c, resume=True, console=console))
    others = {label: timed(label, _config(config, output_dir, spec.common, overrides, spec.suffix,
                                          experts_run_defaults()), "metrics.json",
                           lambda c: train_experts(c, resume=True, console=console))
              for label, config, overrides in spec.other_generals}
    partition = output_dir / f"partition{spec.suffix}.json"
    partitions = {None: (partition, spec.partition_overrides)}
    partitions.update({label: (output_dir / f"partition-{label}{spec.suffix}.json", kw)
                       for label, kw in spec.other_partitions})
    t0 = time.perf_counter()
    for path, keywords in partitions.values():
        if not path.is_file():
            make_partition(gen, spec.n_experts, **keywords).save(path)
    seconds["partition"] = time.perf_counter() - t0
    experts = {}
    for step in spec.experts:
        start = others[step.init] if step.init is not None else general
        links = [f"experts.init={start}", f"experts.partition={partitions[step.partition][0]}",
                 *([f"experts.router={gen}"] if step.router else [])]
        cfg = _config(step.config, output_dir, spec.common, (*links, *step.overrides), spec.suffix,
                      experts_run_defaults())
        experts[step.label] = timed(step.label, cfg, "experts.json",
                                    lambda c: train_experts(c, resume=True, console=console))
    return TrainedSystem(gen, general, partition, experts, other_generals=others, seconds=seconds, reused=reused)
