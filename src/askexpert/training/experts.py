"""Expert training: static and progressive specialists, from one start and one budget.

Where an expert starts (``experts.init_from``):

* ``general``: the trained general medium model of ``experts.init`` (the original recipe);
* ``scratch``: random weights of that architecture from ``experts.init_seed``, bit-identical for
  every strategy and expert of a comparison;
* ``pretrained``: timm's weights of that architecture (``model.pretrained_file`` or the cache).

The start has the full all-class head. Where training narrows to the expert's outputs (its
subset plus one "other" output), the head is cut (:func:`expert_from_general`): the subset rows
are copied, the "other" row is the mean of the remaining rows with a log-count bias, so the cut
model already ranks its classes as the full one did. Then, per strategy:

* ``static``: one stage of subset-only batches;
* ``static-other``: one stage with a fixed share (``other_share``) of out-of-subset images whose
  target is "other" throughout (the specialists of Hinton et al., 2015);
* ``progressive``: stages whose batches hold a shrinking share of out-of-subset images, optionally
  drawn towards the classes confused with the subset (``hard_negatives``), with in-subset images
  optionally drawn towards those the general model finds hard (``focus``), optionally distilling
  the general model (``distill``). A stage may instead train every class with its true label
  (``labels: all``, first stages only): the full-width head learns the whole label space, and the
  head is cut where those stages end. Later stages may distil the model as it stood there
  (``lwf``, Learning without Forgetting: its answer collapsed onto subset + "other", the "other"
  logit being the log-sum-exp of the other classes), scale the learning rate (``lr_scale``) and
  freeze the stem or lower blocks. With ``router`` (the edge generalist), both draws follow what
  that router will actually send the expert, image by image: in-subset images by the
  generalist's uncertainty (1 - its max probability), out-of-subset images by the generalist's
  probability mass on the subset.

Every strategy sees the same number of optimiser steps and images (``passes`` over the subset,
one learning-rate schedule over them), so a comparison between them is at equal budget. Each
expert's ``budget`` records its steps, images, and the forward passes of any teacher.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import safetensors.torch
import torch
from rich.console import Console

from askexpert.config import ExpertsConfig, RunConfig
from askexpert.console import stderr_console
from askexpert.contract.labels import OTHER_NAME
from askexpert.data import ArraySplit, DatasetSplits, FileSplit, ImageSplit, load_dataset
from askexpert.devices import resolve_device
from askexpert.errors import ConfigError
from askexpert.models import (
    Checkpoint,
    ModelSpec,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from askexpert.models.checkpoint import checkpoint_stem, open_checkpoint
from askexpert.models.collapse import collapse_head
from askexpert.training.engine import FitResult, fit, images_per_second
from askexpert.training.evaluate import (
    SubsetMetrics,
    accuracy,
    predict_logits,
    subset_metrics,
    subset_targets,
)
from askexpert.training.generalist import dataset_record, train_generalist
from askexpert.training.logits import cached_logits, store_logits
from askexpert.training.objective import ExpertObjective, collapsed_spec, expert_from_general
from askexpert.training.partition import Partition
from askexpert.training.plans import MixturePlan, set_frozen
from askexpert.training.recipes import (
    Budget,
    Start,
    Steering,
    draw_steering,
    spent_budget,
    starting_model,
    strategy_stages,
)
from askexpert.training.rundir import prepare_run_dir


def _with_labels(split: ImageSplit, indices: torch.Tensor, labels: torch.Tensor) -> ImageSplit:
    part = split.take(indices)
    if isinstance(part, ArraySplit):
        return ArraySplit(part.images, labels)
    return FileSplit(part.paths, labels, part.size, part.channels)


@dataclass
class ExpertsResult:
    run_dir: Path
    experts: list[ExpertSummary]  # empty for the general model (strategy: general)


def experts_run_defaults() -> dict:
    """The one defaults block of an experts run (askexpert train experts, the pipeline): what a config file
    or an override does not set (the experts section's own defaults are ExpertsConfig's). A fresh dict a
    call: the config loader merges overrides into its base, and a shared one would carry them to the next run."""
    return {"name": "experts", "model": {"name": "vit-expert-28"}, "experts": {}}


def experts_run_config(path: Path | None, overrides: list[str], base: dict | None = None) -> RunConfig:
    """The run config of ``askexpert train experts``. Static and progressive experts inherit the data of
    the general model they start from (``experts.init``: dataset, root, splits and subsets; the input
    size and channels come from its checkpoint anyway); a config file or an override changes single
    keys of it (``--data-root``, ``--set data.train_subset=...``)."""
    from askexpert.config import load_run_config

    cfg = load_run_config(path, overrides, base=base)
    ecfg = cfg.experts
    if ecfg is None or ecfg.strategy == "general" or ecfg.init is None:
        return cfg
    stem = checkpoint_stem(ecfg.init)
    if not stem.with_suffix(".json").is_file():
        return cfg  # train_experts reports a missing init, with its fix
    inherited = read_meta(stem).dataset.config
    if not inherited:
        return cfg
    return load_run_config(path, overrides, base={**(base or {}), "data": inherited})


def _check_inputs(cfg: RunConfig, ecfg: ExpertsConfig, partition: Partition, general: Checkpoint,
                  splits: DatasetSplits) -> None:
    """The partition, the general model and the data must agree on the classes; say which to change."""
    init_data = general.meta.dataset.config.get("name")
    if init_data and init_data != cfg.data.name:
        raise ConfigError(
            f"the experts would train on {cfg.data.name}, but the general model {ecfg.init} was trained on "
            f"{init_data}",
            fix=f"leave out --data (experts train on the general model's data), or pass --init a general model "
            f"trained on {cfg.data.name}")
    if general.meta.class_names != splits.class_names:
        raise ConfigError(
            f"the general model {ecfg.init} predicts {len(general.meta.class_names)} classes "
            f"({', '.join(general.meta.class_names[:3])}, ...) but {splits.name} has {splits.num_classes} "
            f"({', '.join(splits.class_names[:3])}, ...)",
            fix="leave out --data, or pass --init a general model trained on this data")
    if partition.class_names != splits.class_names:
        source = partition.details.get("generalist", "another model")
        raise ConfigError(
            f"the partition {ecfg.partition} groups the classes of {source} "
            f"({', '.join(partition.class_names[:3])}, ...), not those of {splits.name}",
            fix=f"build it from the generalist of this data: askexpert partition GENERALIST_RUN, then pass "
            f"--partition GENERALIST_RUN/partition-confusion-{len(partition.experts)}.json")


def _generalist_val(partition: Partition, cfg: RunConfig, device) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    """The generalist the partition was built from: its run, and its logits and labels on this run's
    validation split (cached next to its checkpoint)."""
    source = partition.details.get("generalist")
    if not source or not checkpoint_stem(Path(source)).with_suffix(".json").is_file():
        return None
    logits, labels = cached_logits(open_checkpoint(source), "val", data_cfg=cfg.data, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    return source, logits, labels


def weaker_than_generalist(name: str, accuracy: float, reference: float, source: str, what: str) -> str | None:
    """A warning when a near-edge model ends below the edge generalist it should beat, naming the fix."""
    if accuracy >= reference:
        return None
    return (f"{name} reaches {accuracy:.2f}% {what} on validation, below the generalist {source} "
            f"({reference:.2f}%): offloading to it can lower accuracy -- fix: train it longer (more --epochs, "
            f"or --passes for experts; docs/usage.md: 'Small data sets') or start it from a stronger general model")


def train_experts(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False,
                  console: Console | None = None) -> ExpertsResult:
    """Train every expert of ``cfg.experts`` (static or progressive) into ``cfg.run_dir/expert-<e>``.

    With ``strategy: general`` this trains the general medium model instead (all classes).
    """
    console = console or stderr_console()
    ecfg = cfg.experts or ExpertsConfig()
    if ecfg.strategy == "general":
        result = train_generalist(cfg, resume=resume, overwrite=overwrite, console=console, kind="general")
        return ExpertsResult(result.run_dir, [])
    if ecfg.partition is None or ecfg.init is None:
        raise ConfigError(f"{ecfg.strategy} experts need experts.partition and experts.init",
                          fix="pass --partition FILE (askexpert partition) and --init GENERAL_RUN_DIR")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    partition = Partition.load(ecfg.partition)
    general = load_checkpoint(ecfg.init)
    meta = general.meta
    splits = load_dataset(cfg.data, image_size=meta.model.input.size, channels=meta.model.input.channels)
    _check_inputs(cfg, ecfg, partition, general, splits)
    run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    partition.save(run_dir / "partition.json")
    device = resolve_device(cfg.train.device)
    start = starting_model(ecfg, cfg, general, splits)
    console.log(f"experts on {splits.name} ({len(splits.train)} train / {len(splits.val)} val images), from "
                f"{start.source}, architecture of {ecfg.init}")
    reference = _generalist_val(partition, cfg, device)
    if reference is not None:
        source, gen_logits, gen_labels = reference
    if reference is not None and ecfg.init_from == "general":
        gen_acc = accuracy(gen_logits, gen_labels)
        general_logits, _ = cached_logits(general.stored, "val", data_cfg=cfg.data, splits=splits, device=str(device),
                                          batch_size=cfg.train.eval_batch_size)  # the same images as the generalist's
        general_acc = accuracy(general_logits, gen_labels)
        note = weaker_than_generalist(f"the general model {ecfg.init}", general_acc, gen_acc, source, "top-1")
        if note:
            console.log(f"[yellow]warning:[/yellow] {note}")
    steering = draw_steering(general, ecfg, splits, cfg, device)

    job = ExpertJob(cfg, ecfg, partition, general, start, splits, run_dir, steering, device, resume, console)
    summaries = []
    for e, subset in enumerate(partition.experts):
        summary = _train_one(job, e)
        if reference is not None:
            inside = torch.isin(gen_labels, torch.tensor(subset))
            # the generalist's answer on the subset's images, right only when it names the true class
            gen_sub = accuracy(gen_logits[inside], gen_labels[inside])
            summary = replace(summary, generalist_val_subset_accuracy=gen_sub)
            note = weaker_than_generalist(f"expert {e}", summary.val.subset_accuracy, gen_sub, source, "on its subset")
            if note:
                console.log(f"[yellow]warning:[/yellow] {note}")
        summaries.append(summary)
    (run_dir / "experts.json").write_text(json.dumps(
        {"strategy": ecfg.strategy, "init": str(ecfg.init), "init_from": ecfg.init_from,
         "init_sha256": start.sha256, "partition": partition.model_dump(),
         "experts": [s.to_json() for s in summaries]}, indent=1))
    return ExpertsResult(run_dir, summaries)


@dataclass(frozen=True)
class ExpertSummary:
    """One trained expert: what it holds, how it was trained and at what cost, and its figures on its
    subset. ``to_json`` is its ``metrics.json`` (and its checkpoint's metrics)."""

    expert: int
    classes: list[int]
    names: list[str]
    strategy: str
    init_from: str
    init_sha256: str
    budget: Budget | None  # None: a run trained before budgets were recorded
    train_seconds: float
    images_per_s: float
    precision: str
    val: SubsetMetrics
    test: SubsetMetrics
    generalist_val_subset_accuracy: float | None = None

    @property
    def images_seen(self) -> int | None:
        return self.budget.images if self.budget is not None else None

    def to_json(self) -> dict:
        d = {"expert": self.expert, "classes": self.classes, "names": self.names, "strategy": self.strategy,
             "init_from": self.init_from, "init_sha256": self.init_sha256, "images_seen": self.images_seen,
             "budget": asdict(self.budget) if self.budget is not None else None, "train_seconds": self.train_seconds,
             "images_per_s": self.images_per_s, "precision": self.precision, "val": self.val.to_json(),
             "test": self.test.to_json()}
        if self.generalist_val_subset_accuracy is not None:
            d["generalist_val_subset_accuracy"] = self.generalist_val_subset_accuracy
        return d

    @classmethod
    def from_json(cls, d: dict) -> ExpertSummary:
        budget = d.get("budget")
        return cls(d["expert"], list(d["classes"]), list(d["names"]), d["strategy"], d.get("init_from", "general"),
                   d.get("init_sha256", ""), Budget(**budget) if budget else None, d.get("train_seconds", 0.0),
                   d.get("images_per_s", 0.0), d.get("precision", ""), SubsetMetrics.from_json(d["val"]),
                   SubsetMetrics.from_json(d["test"]), d.get("generalist_val_subset_accuracy"))


@dataclass(frozen=True)
class ExpertJob:
    """What every expert of one run shares: the configs, the partition, where the experts start, the data,
    the draws' steering and where the run writes."""

    cfg: RunConfig
    ecfg: ExpertsConfig
    partition: Partition
    general: Checkpoint
    start: Start
    splits: DatasetSplits
    run_dir: Path
    steering: Steering
    device: torch.device
    resume: bool
    console: Console

    @property
    def progressive(self) -> bool:
        return self.ecfg.strategy == "progressive"

    @property
    def distill(self) -> float:
        return self.ecfg.distill if self.progressive else 0.0


def _expert_plan(job: ExpertJob, e: int, subset: list[int]) -> MixturePlan:
    """The batches of expert ``e``: every epoch's draws from its subset and from outside it, by stage."""
    train = job.splits.train
    targets = subset_targets(train.labels, subset, job.splits.num_classes)
    in_subset = torch.nonzero(targets < len(subset)).flatten()
    out_subset = torch.nonzero(targets == len(subset)).flatten()
    steering = job.steering
    plan = MixturePlan(
        split=train, targets=targets, in_subset=in_subset, out_subset=out_subset,
        stages=strategy_stages(job.ecfg), batch_size=job.cfg.train.batch_size,
        epochs=max(1, round(job.ecfg.passes)),
        hardness=steering.hardness[in_subset] if steering.hardness is not None else None,
        negative_weight=steering.negative_weight(train.labels, out_subset, subset) if len(out_subset) else None,
        hard_negatives=job.ecfg.hard_negatives if job.progressive else 0.0,
    )
    if plan.wide_epochs() >= plan.epochs:
        raise ConfigError(f"{plan.epochs} passes leave no epoch after the all-class stages for expert {e}",
                          fix="raise experts.passes, or give the all-class stages a smaller fraction")
    if job.distill + max(st.lwf for st in plan.stages) > 1:
        raise ConfigError(f"experts.distill {job.distill:g} plus a stage's lwf weigh more than 1",
                          fix="lower experts.distill or the stages' lwf so they sum to at most 1")
    return plan


@dataclass(frozen=True)
class _Phase:
    """What both phases of one expert's training share."""

    plan: MixturePlan
    spec: ModelSpec  # the expert's (subset + "other" outputs)
    augment: str
    stage_ends: set[int]  # epochs after which it is validated (a log line each)


def _all_class_phase(job: ExpertJob, e: int, phase: _Phase, val_in: torch.Tensor,
                     expert_dir: Path) -> tuple[torch.nn.Module, list[FitResult]]:
    """The starting model after the all-class stages (every class with its true label, the full-width head;
    the starting model itself where there are none), resumable from its final weights."""
    full = copy.deepcopy(job.start.model)
    wide = phase.plan.wide_epochs()
    if not wide:
        return full, []
    wide_dir = expert_dir / "all-classes"
    done = wide_dir / "final.safetensors"
    if job.resume and done.is_file():
        full.load_state_dict(safetensors.torch.load_file(str(done)))
        return full, []
    wide_dir.mkdir(exist_ok=True)
    result = fit(full, plan=phase.plan, val=job.splits.val.take(val_in), spec=phase.spec.input, cfg=job.cfg.train,
                 augment=phase.augment, run_dir=wide_dir, resume=job.resume, console=job.console,
                 label=f"expert {e} (all classes)", window=(1, wide), val_epochs=phase.stage_ends)
    set_frozen(full)
    safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in full.state_dict().items()}, str(done))
    return full, [result]


def _train_one(job: ExpertJob, e: int) -> ExpertSummary:
    subset = job.partition.experts[e]
    cfg, ecfg, splits, console = job.cfg, job.ecfg, job.splits, job.console
    expert_dir = job.run_dir / f"expert-{e}"
    names = job.partition.names(e)
    if checkpoint_stem(expert_dir).with_suffix(".json").is_file():
        console.log(f"expert {e} ({', '.join(names)}) is already trained")
        return ExpertSummary.from_json(json.loads((expert_dir / "metrics.json").read_text()))
    expert_dir.mkdir(parents=True, exist_ok=True)
    plan = _expert_plan(job, e, subset)
    torch.manual_seed(cfg.train.seed + 1000 * (e + 1))
    teacher = _frozen(copy.deepcopy(job.general.model).to(job.device)) if job.distill > 0 else None
    val_targets = subset_targets(splits.val.labels, subset, splits.num_classes)
    val_in = torch.nonzero(val_targets < len(subset)).flatten()
    val = _with_labels(splits.val, val_in, val_targets[val_in])
    spec = job.start.spec.model_copy(update={"kwargs": {**job.start.spec.kwargs, "num_classes": len(subset) + 1}})
    augment, why = splits.augment_for(cfg.train.augment)
    wide = plan.wide_epochs()
    console.log(f"expert {e}: {', '.join(names)} ({ecfg.strategy} from {job.start.source}; {len(plan.in_subset)} "
                f"images in the subset, {plan.epochs} x {plan.steps_per_epoch} steps of {cfg.train.batch_size}"
                + (f", the first {wide} on every class with its label" if wide else "")
                + f"; augmentation {augment}: {why})")
    # validation (a log line an epoch) where each stage ends: the expert's own figures come after training
    stage_ends = {epoch for epoch in range(1, plan.epochs + 1)
                  if epoch == plan.epochs or plan.stage_index(epoch + 1) != plan.stage_index(epoch)}
    if ecfg.head == "collapse":
        return _train_collapsed(job, e, plan, teacher, val, augment, stage_ends)
    phase = _Phase(plan, spec, augment, stage_ends)
    full, results = _all_class_phase(job, e, phase, val_in, expert_dir)
    earlier = _frozen(copy.deepcopy(full).to(job.device)) if any(st.lwf > 0 for st in plan.stages) else None
    model = expert_from_general(full, subset)  # the head cut where the all-class stages end
    del full
    objective = ExpertObjective(subset=subset, label_smoothing=cfg.train.label_smoothing, teacher=teacher,
                                distill=job.distill, temperature=ecfg.distill_temperature, earlier=earlier)
    plan.on_stage = objective.set_stage
    results.append(fit(model, plan=plan, val=val, spec=spec.input, cfg=cfg.train, augment=augment,
                       run_dir=expert_dir, resume=job.resume, loss_fn=objective, console=console,
                       label=f"expert {e}", window=(wide + 1, plan.epochs), val_epochs=stage_ends))
    set_frozen(model)
    return _finish(job, e, model, spec, results, spent_budget(plan, objective, job.distill, job.steering.images))


def _train_collapsed(job: ExpertJob, e: int, plan: MixturePlan, teacher: torch.nn.Module | None, val: ImageSplit,
                     augment: str, stage_ends: set[int]) -> ExpertSummary:
    """``experts.head: collapse``: the starting model keeps its all-class head, which answers as subset +
    "other" (:mod:`askexpert.models.collapse`); the all-class stages train it at full width, the later ones
    through the collapse, all in one run of the loop (one optimiser, one warm-up and one cosine decay)."""
    cfg, subset = job.cfg, job.partition.experts[e]
    if any(st.lwf > 0 for st in plan.stages):
        raise ConfigError("experts.head: collapse keeps one model throughout, so there is no earlier state to "
                          "distil (lwf)", fix="drop lwf from the stages, or use experts.head: cut")
    model = copy.deepcopy(job.start.model)
    head = collapse_head(model, subset)
    spec = collapsed_spec(job.start.spec, subset)
    objective = ExpertObjective(subset=subset, label_smoothing=cfg.train.label_smoothing, teacher=teacher,
                                distill=job.distill, temperature=job.ecfg.distill_temperature, head=head)
    plan.on_stage = objective.set_stage
    narrow_ends = {epoch for epoch in stage_ends if plan.stage(epoch).labels == "subset"}  # val has subset targets
    result = fit(model, plan=plan, val=val, spec=spec.input, cfg=cfg.train, augment=augment,
                 run_dir=job.run_dir / f"expert-{e}", resume=job.resume, loss_fn=objective, console=job.console,
                 label=f"expert {e}", val_epochs=narrow_ends)
    head.wide = False
    set_frozen(model)
    return _finish(job, e, model, spec, [result], spent_budget(plan, objective, job.distill, job.steering.images))


def _finish(job: ExpertJob, e: int, model: torch.nn.Module, spec: ModelSpec, results: list[FitResult],
            budget: Budget) -> ExpertSummary:
    """Expert ``e``'s figures on validation and test, its checkpoint, its logits (for the system's
    evaluation) and its ``metrics.json``."""
    subset, splits, cfg, ecfg = job.partition.experts[e], job.splits, job.cfg, job.ecfg
    stem = checkpoint_stem(job.run_dir / f"expert-{e}")
    logits = {split: predict_logits(model, splits.split(split), spec.input, batch_size=cfg.train.eval_batch_size,
                                    device=job.device) for split in ("val", "test")}
    figures = {split: subset_metrics(z, subset_targets(splits.split(split).labels, subset, splits.num_classes),
                                     len(subset)) for split, z in logits.items()}
    summary = ExpertSummary(e, subset, job.partition.names(e), ecfg.strategy, ecfg.init_from, job.start.sha256, budget,
                            sum(r.seconds for r in results), images_per_second(results), results[-1].precision,
                            figures["val"], figures["test"])
    metrics = summary.to_json()
    save_checkpoint(stem, model, spec=spec, kind="expert", class_names=summary.names + [OTHER_NAME],
                    dataset=dataset_record(cfg, splits), training=cfg.model_dump(mode="json"),
                    metrics=metrics, extra={"expert_id": e, "subset": subset, "strategy": ecfg.strategy,
                                            "init_from": ecfg.init_from, "init_sha256": job.start.sha256})
    stored = open_checkpoint(stem)
    for split, z in logits.items():  # the system evaluation reads these instead of predicting again
        store_logits(stored, split, cfg.data, z, splits.split(split).labels)
    (stem.parent / "metrics.json").write_text(json.dumps(metrics, indent=1))
    job.console.log(f"expert {e}: {summary.val.subset_accuracy:.2f}% on its subset (val), "
                    f"'other' recall {summary.val.other_recall or 0:.1f}%")
    return summary


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
