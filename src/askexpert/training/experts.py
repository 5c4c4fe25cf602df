"""Expert training: static and progressive specialists, from the same general model and budget.

Every expert starts as a copy of the general medium model whose head is cut down to its class
subset plus one "other" output (the subset rows are copied, the "other" row is the mean of the
remaining rows with a log-count bias, so at step 0 the expert already ranks its classes as the
general model does). Then:

* ``static``: one stage of subset-only batches.
* ``progressive``: stages whose batches hold a shrinking share of out-of-subset images (target:
  "other"), optionally drawn towards the classes confused with the subset (``hard_negatives``),
  with in-subset images optionally drawn towards those the general model finds hard (``focus``),
  and optionally distilling the general model's answer (collapsed onto subset + "other").
  With ``router`` (the edge generalist), both draws follow what that router will actually send the
  expert, image by image: in-subset images by the generalist's uncertainty (1 - its max
  probability: it offloads its least confident), out-of-subset images by the generalist's
  probability mass on the subset (the images its Top-k choice would send here by mistake).

Both see the same number of images (``passes`` over the subset) under the same learning-rate
schedule, so their comparison is fair.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from askexpert.config import ExpertsConfig, RunConfig, StageConfig
from askexpert.console import stderr_console
from askexpert.data import ArraySplit, DatasetBundle, FileSplit, ImageSplit, load_dataset
from askexpert.devices import resolve_device
from askexpert.errors import ConfigError
from askexpert.models import Checkpoint, load_checkpoint, read_meta, save_checkpoint
from askexpert.models.checkpoint import checkpoint_stem
from askexpert.training.engine import fit
from askexpert.training.evaluate import predict_logits
from askexpert.training.generalist import dataset_record, train_generalist
from askexpert.training.logits import cached_logits
from askexpert.training.partition import Partition, confusion_affinity
from askexpert.training.plans import MixturePlan
from askexpert.training.rundir import prepare_run_dir

OTHER_NAME = "other"


def subset_targets(labels: torch.Tensor, subset: list[int], num_classes: int) -> torch.Tensor:
    """Map dataset labels to an expert's outputs: position in ``subset``, or ``len(subset)`` ("other")."""
    table = torch.full((num_classes,), len(subset), dtype=torch.int64)
    table[torch.tensor(subset)] = torch.arange(len(subset))
    return table[labels]


def expert_from_general(general: torch.nn.Module, subset: list[int]) -> torch.nn.Module:
    """A copy of ``general`` whose head outputs ``subset`` (same rows) plus "other"."""
    model = copy.deepcopy(general)
    old = general.get_classifier()
    if not isinstance(old, torch.nn.Linear):
        raise ConfigError(f"cannot derive an expert from a model whose head is {type(old).__name__}",
                          fix="use a model with a linear classifier head (every ViT preset has one)")
    n = old.out_features
    rest = [c for c in range(n) if c not in set(subset)]
    model.reset_classifier(len(subset) + 1)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight[: len(subset)] = old.weight[subset]
        head.bias[: len(subset)] = old.bias[subset]
        if rest:
            head.weight[-1] = old.weight[rest].mean(0)
            head.bias[-1] = old.bias[rest].mean() + math.log(len(rest))
        else:
            head.weight[-1].zero_()
            head.bias[-1] = -10.0
    return model


class ExpertObjective:
    """Cross-entropy on subset/"other" targets, optionally mixed with distillation from the general model.

    The teacher's logits are collapsed onto the expert's outputs exactly: the subset logits, and
    ``logsumexp`` of the others as the "other" logit.
    """

    def __init__(self, *, subset: list[int], label_smoothing: float, teacher: torch.nn.Module | None = None,
                 distill: float = 0.0, temperature: float = 2.0) -> None:
        self.subset = torch.tensor(subset)
        self.label_smoothing = label_smoothing
        self.teacher, self.distill, self.temperature = teacher, distill, temperature
        self.rest: torch.Tensor | None = None

    def collapse(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        n = teacher_logits.shape[1]
        if self.rest is None:
            mask = torch.ones(n, dtype=torch.bool)
            mask[self.subset] = False
            self.rest = torch.nonzero(mask).flatten()
        dev = teacher_logits.device
        inside = teacher_logits[:, self.subset.to(dev)]
        if len(self.rest) == 0:
            return torch.cat([inside, torch.full_like(inside[:, :1], -1e4)], 1)
        other = torch.logsumexp(teacher_logits[:, self.rest.to(dev)], dim=1, keepdim=True)
        return torch.cat([inside, other], 1)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.teacher is None or self.distill <= 0:
            return loss
        with torch.no_grad():
            soft = self.collapse(self.teacher(inputs).float())
        t = self.temperature
        kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(soft / t, 1), log_target=True,
                      reduction="batchmean") * t * t
        return (1 - self.distill) * loss + self.distill * kd


def _with_labels(split: ImageSplit, indices: torch.Tensor, labels: torch.Tensor) -> ImageSplit:
    part = split.take(indices)
    if isinstance(part, ArraySplit):
        return ArraySplit(part.images, labels)
    return FileSplit(part.paths, labels, part.size, part.channels)


def strategy_stages(cfg: ExpertsConfig) -> list[StageConfig]:
    if cfg.strategy == "static":
        return [StageConfig(fraction=1.0, out_share=0.0, focus=0.0)]
    return cfg.stages


@dataclass
class ExpertsResult:
    run_dir: Path
    experts: list[dict]


def subset_metrics(logits: torch.Tensor, targets: torch.Tensor, subset_size: int) -> dict:
    """An expert's accuracy on its subset and its "other" recall, from its logits and ``subset_targets``."""
    pred = logits.argmax(1)
    inside = targets < subset_size
    outside = ~inside
    return {
        "subset_accuracy": 100 * float((pred[inside] == targets[inside]).float().mean()),
        "subset_samples": int(inside.sum()),
        "other_recall": 100 * float((pred[outside] == subset_size).float().mean()) if outside.any() else None,
        "other_samples": int(outside.sum()),
    }


def _expert_metrics(model: torch.nn.Module, ckpt_input, split: ImageSplit, subset: list[int], n_classes: int,
                    device, batch_size: int) -> dict:
    logits = predict_logits(model, split, ckpt_input, batch_size=batch_size, device=device)
    return subset_metrics(logits, subset_targets(split.labels, subset, n_classes), len(subset))


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
    inherited = read_meta(stem).dataset.get("config")
    if not inherited:
        return cfg
    return load_run_config(path, overrides, base={**(base or {}), "data": inherited})


def _check_inputs(cfg: RunConfig, ecfg: ExpertsConfig, partition: Partition, general: Checkpoint,
                  bundle: DatasetBundle) -> None:
    """The partition, the general model and the data must agree on the classes; say which to change."""
    init_data = general.meta.dataset.get("config", {}).get("name")
    if init_data and init_data != cfg.data.name:
        raise ConfigError(
            f"the experts would train on {cfg.data.name}, but the general model {ecfg.init} was trained on "
            f"{init_data}",
            fix=f"leave out --data (experts train on the general model's data), or pass --init a general model "
            f"trained on {cfg.data.name}")
    if general.meta.class_names != bundle.class_names:
        raise ConfigError(
            f"the general model {ecfg.init} predicts {len(general.meta.class_names)} classes "
            f"({', '.join(general.meta.class_names[:3])}, ...) but {bundle.name} has {bundle.num_classes} "
            f"({', '.join(bundle.class_names[:3])}, ...)",
            fix="leave out --data, or pass --init a general model trained on this data")
    if partition.class_names != bundle.class_names:
        source = partition.details.get("generalist", "another model")
        raise ConfigError(
            f"the partition {ecfg.partition} groups the classes of {source} "
            f"({', '.join(partition.class_names[:3])}, ...), not those of {bundle.name}",
            fix=f"build it from the generalist of this data: askexpert partition GENERALIST_RUN, then pass "
            f"--partition GENERALIST_RUN/partition-confusion-{len(partition.experts)}.json")


def _generalist_val(partition: Partition, cfg: RunConfig, device) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    """The generalist the partition was built from: its run, and its logits and labels on this run's
    validation split (cached next to its checkpoint)."""
    source = partition.details.get("generalist")
    if not source or not checkpoint_stem(Path(source)).with_suffix(".json").is_file():
        return None
    logits, labels = cached_logits(Path(source), "val", data_cfg=cfg.data, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    return source, logits, labels


def weaker_than_generalist(name: str, accuracy: float, reference: float, source: str, what: str) -> str | None:
    """A warning when a near-edge model ends below the edge generalist it should beat, naming the fix."""
    if accuracy >= reference:
        return None
    return (f"{name} reaches {accuracy:.2f}% {what} on validation, below the generalist {source} "
            f"({reference:.2f}%): offloading to it can lower accuracy -- fix: train it longer (more --epochs, "
            f"or --passes for experts; README: 'Small data sets') or start it from a stronger general model")


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
    bundle = load_dataset(cfg.data, image_size=meta.model.input.size, channels=meta.model.input.channels)
    _check_inputs(cfg, ecfg, partition, general, bundle)
    run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    partition.save(run_dir / "partition.json")
    console.log(f"experts on {bundle.name} ({len(bundle.train)} train / {len(bundle.val)} val images), from "
                f"the general model {ecfg.init}")
    device = resolve_device(cfg.train.device)
    reference = _generalist_val(partition, cfg, device)
    if reference is not None:
        source, gen_logits, gen_labels = reference
        gen_acc = 100 * float((gen_logits.argmax(1) == gen_labels).float().mean())
        general_logits, _ = cached_logits(general.path, "val", data_cfg=cfg.data, bundle=bundle, device=str(device),
                                          batch_size=cfg.train.eval_batch_size)  # the same images as the generalist's
        general_acc = 100 * float((general_logits.argmax(1) == gen_labels).float().mean())
        note = weaker_than_generalist(f"the general model {ecfg.init}", general_acc, gen_acc, source, "top-1")
        if note:
            console.log(f"[yellow]warning:[/yellow] {note}")
    steering = _steering(general, ecfg, bundle, cfg, device)

    summaries = []
    for e, subset in enumerate(partition.experts):
        summary = _train_one(e, subset, cfg, ecfg, partition, general, bundle, run_dir, steering, device, resume,
                             console)
        if reference is not None:
            inside = torch.isin(gen_labels, torch.tensor(subset))
            # the generalist's answer on the subset's images, right only when it names the true class
            gen_sub = 100 * float((gen_logits[inside].argmax(1) == gen_labels[inside]).float().mean())
            summary["generalist_val_subset_accuracy"] = gen_sub
            note = weaker_than_generalist(f"expert {e}", summary["val"]["subset_accuracy"], gen_sub, source,
                                          "on its subset")
            if note:
                console.log(f"[yellow]warning:[/yellow] {note}")
        summaries.append(summary)
    (run_dir / "experts.json").write_text(json.dumps(
        {"strategy": ecfg.strategy, "init": str(ecfg.init), "partition": partition.model_dump(),
         "experts": summaries}, indent=1))
    return ExpertsResult(run_dir, summaries)


@dataclass
class Steering:
    """What steers the progressive draws: per-training-image hardness of in-subset images (focus),
    and either a class-level affinity (general model's confusion) or the router's per-image
    probabilities (to weigh out-of-subset images by the probability mass it puts on a subset)."""

    hardness: torch.Tensor | None  # [N train]
    class_affinity: torch.Tensor | None  # [C, C]
    router_probs: torch.Tensor | None  # [N train, C]

    def negative_weight(self, labels: torch.Tensor, out_subset: torch.Tensor, subset: list[int]) -> torch.Tensor:
        if self.router_probs is not None:
            return self.router_probs[out_subset][:, subset].sum(1)
        return self.class_affinity[labels[out_subset]][:, subset].sum(1)


def _steering(general: Checkpoint, ecfg: ExpertsConfig, bundle: DatasetBundle, cfg: RunConfig, device) -> Steering:
    focus = any(s.focus > 0 for s in strategy_stages(ecfg))
    if ecfg.strategy == "progressive" and ecfg.router is not None:
        router = checkpoint_stem(ecfg.router)
        if not router.with_suffix(".json").is_file():
            raise ConfigError(f"experts.router {ecfg.router} holds no trained model",
                              fix="pass the edge generalist's run directory (askexpert train generalist)")
        if read_meta(router).class_names != bundle.class_names:
            raise ConfigError(f"the router {ecfg.router} predicts other classes than {bundle.name} has",
                              fix="pass the generalist trained on the dataset of this run")
        logits, _ = cached_logits(router, "train", data_cfg=cfg.data, device=str(device),
                                  batch_size=cfg.train.eval_batch_size)
        probs = torch.softmax(logits, 1)
        return Steering(1 - probs.max(1).values if focus else None, None, probs)
    return Steering(_general_hardness(general, bundle, cfg, device) if focus else None,
                    _general_confusion(general, bundle, cfg, device), None)


def _general_confusion(general: Checkpoint, bundle: DatasetBundle, cfg: RunConfig, device) -> torch.Tensor:
    """Affinity between classes from the general model's validation confusion (for hard negatives)."""
    logits, labels = cached_logits(general.path, "val", data_cfg=cfg.data, bundle=bundle, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    n = bundle.num_classes
    confusion = torch.bincount(labels * n + logits.argmax(1), minlength=n * n).reshape(n, n)
    return confusion_affinity(confusion)


def _general_hardness(general: Checkpoint, bundle: DatasetBundle, cfg: RunConfig, device) -> torch.Tensor:
    """1 - the general model's probability of the true class, for every training image."""
    logits, labels = cached_logits(general.path, "train", data_cfg=cfg.data, bundle=bundle, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    p_true = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    return 1 - p_true


def _train_one(e: int, subset: list[int], cfg: RunConfig, ecfg: ExpertsConfig, partition: Partition,
               general: Checkpoint, bundle: DatasetBundle, run_dir: Path, steering: Steering,
               device, resume: bool, console: Console) -> dict:
    expert_dir = run_dir / f"expert-{e}"
    stem = checkpoint_stem(expert_dir)
    names = partition.names(e)
    if stem.with_suffix(".json").is_file():
        console.log(f"expert {e} ({', '.join(names)}) is already trained")
        return json.loads((expert_dir / "metrics.json").read_text())
    expert_dir.mkdir(parents=True, exist_ok=True)
    n_classes = bundle.num_classes
    train = bundle.train
    targets = subset_targets(train.labels, subset, n_classes)
    in_subset = torch.nonzero(targets < len(subset)).flatten()
    out_subset = torch.nonzero(targets == len(subset)).flatten()
    negative_weight = steering.negative_weight(train.labels, out_subset, subset) if len(out_subset) else None
    plan = MixturePlan(
        split=train, targets=targets, in_subset=in_subset, out_subset=out_subset,
        stages=strategy_stages(ecfg), batch_size=cfg.train.batch_size,
        epochs=max(1, round(ecfg.passes)),
        hardness=steering.hardness[in_subset] if steering.hardness is not None else None,
        negative_weight=negative_weight,
        hard_negatives=ecfg.hard_negatives if ecfg.strategy == "progressive" else 0.0,
    )
    torch.manual_seed(cfg.train.seed + 1000 * (e + 1))
    model = expert_from_general(general.model, subset)
    teacher = None
    distill = ecfg.distill if ecfg.strategy == "progressive" else 0.0
    if distill > 0:
        teacher = copy.deepcopy(general.model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    objective = ExpertObjective(subset=subset, label_smoothing=cfg.train.label_smoothing, teacher=teacher,
                                distill=distill, temperature=ecfg.distill_temperature)
    val_in = torch.nonzero(subset_targets(bundle.val.labels, subset, n_classes) < len(subset)).flatten()
    val = _with_labels(bundle.val, val_in, subset_targets(bundle.val.labels[val_in], subset, n_classes))
    spec = general.meta.model.model_copy(update={"kwargs": {**general.meta.model.kwargs,
                                                            "num_classes": len(subset) + 1}})
    augment, why = bundle.augment_for(cfg.train.augment)
    console.log(f"expert {e}: {', '.join(names)} ({ecfg.strategy}; {len(in_subset)} images in the subset, "
                f"{plan.epochs} x {plan.steps_per_epoch} steps of {cfg.train.batch_size}; augmentation {augment}: "
                f"{why})")
    result = fit(model, plan=plan, val=val, spec=spec.input, cfg=cfg.train, augment=augment, run_dir=expert_dir,
                 resume=resume, loss_fn=objective, console=console, label=f"expert {e}")
    metrics = {
        "expert": e, "classes": subset, "names": names, "strategy": ecfg.strategy,
        "images_seen": plan.epochs * plan.steps_per_epoch * cfg.train.batch_size,
        "train_seconds": result.seconds, "images_per_s": result.images_per_second, "precision": result.precision,
        "val": _expert_metrics(model, spec.input, bundle.val, subset, n_classes, device, cfg.train.eval_batch_size),
        "test": _expert_metrics(model, spec.input, bundle.test, subset, n_classes, device,
                                cfg.train.eval_batch_size),
    }
    save_checkpoint(stem, model, spec=spec, kind="expert", class_names=names + [OTHER_NAME],
                    dataset=dataset_record(cfg, bundle), training=cfg.model_dump(mode="json"),
                    metrics=metrics, extra={"expert_id": e, "subset": subset, "strategy": ecfg.strategy,
                                            "init_sha256": general.meta.weights_sha256})
    (expert_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    console.log(f"expert {e}: {metrics['val']['subset_accuracy']:.2f}% on its subset (val), "
                f"'other' recall {metrics['val']['other_recall'] or 0:.1f}%")
    return metrics
