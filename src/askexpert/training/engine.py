"""The one training loop: AdamW (timm's optimizer factory, no decay on norms/biases/embeddings),
linear warm-up then cosine decay per step, label smoothing, clipping, bfloat16 autocast on CUDA and
on CPUs with native bfloat16 (AMX or AVX512-BF16; detected, else float32), seeded per epoch,
resumable at every epoch boundary, with a rich progress bar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel

from askexpert.config import TrainConfig
from askexpert.console import progress_bar, stderr_console
from askexpert.data import ImageSplit, InputSpec, to_model_input
from askexpert.devices import resolve_device
from askexpert.errors import ConfigError
from askexpert.models import explicit_attention
from askexpert.training import distributed
from askexpert.training.evaluate import accuracy, predict_logits
from askexpert.training.plans import BatchPlan
from askexpert.training.state import has_state, load_state, save_state

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets, inputs)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16).

    Elsewhere (AVX2-only CPUs, for example) bfloat16 autocast is emulated and measured ~20x slower
    than float32, so it must never be switched on by default.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


PRECISION_ENV = "ASKEXPERT_PRECISION"  # auto (the default), fp32 or bf16: one switch for every training run


def training_precision(device: torch.device, amp: bool) -> str:
    """The arithmetic a training run uses: ``bf16``, ``fp16`` (CUDA without bf16) or ``fp32``.

    ``$ASKEXPERT_PRECISION`` overrides the detection for every run of the process: ``fp32`` forces
    float32 (as ``train.amp: false`` does), ``bf16`` forces bfloat16 autocast even on a CPU that only
    emulates it (~20x slower there: for checking that path, never for speed)."""
    forced = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if forced not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"{PRECISION_ENV}={forced!r} is not a precision",
                          fix=f"set {PRECISION_ENV} to auto, fp32 or bf16 (or unset it)")
    if not amp or forced == "fp32":
        return "fp32"
    if forced == "bf16":
        return "bf16"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch's data order (stream 0) or augmentation (stream 1)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


@dataclass(frozen=True)
class EpochRecord:
    """One trained epoch: what its plan drew (``plan_info``: stage, labels, shares), the step and learning
    rate it ended at, the training loss and accuracy over its images, its speed, and the validation
    figures where it was validated. ``to_json`` is its line of ``metrics.jsonl``."""

    epoch: int
    step: int
    lr: float
    precision: str
    train_loss: float
    train_acc: float
    train_images: int
    train_seconds: float
    images_per_s: float
    plan_info: dict = field(default_factory=dict)
    val_loss: float | None = None
    val_acc: float | None = None

    _FIELDS = ("step", "lr", "precision", "train_loss", "train_acc", "train_images", "train_seconds", "images_per_s")

    def to_json(self) -> dict:
        d = {"epoch": self.epoch, **self.plan_info, **{k: getattr(self, k) for k in self._FIELDS}}
        if self.val_acc is not None:
            d["val_loss"], d["val_acc"] = self.val_loss, self.val_acc
        return d

    @classmethod
    def from_json(cls, d: dict) -> EpochRecord:
        known = {"epoch", *cls._FIELDS, "val_loss", "val_acc"}
        return cls(d["epoch"], *(d[k] for k in cls._FIELDS), {k: v for k, v in d.items() if k not in known},
                   d.get("val_loss"), d.get("val_acc"))

    def summary(self) -> str:
        text = f"loss {self.train_loss:.3f} acc {self.train_acc:5.1f}%"
        if self.val_acc is not None:
            text += f" | val loss {self.val_loss:.3f} acc {self.val_acc:5.2f}%"
        return text + f" | {self.images_per_s:.0f} img/s"


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    precision: str = "fp32"
    stopped_after: int | None = None  # the epoch a deadline stopped the run after (None: it ran its window)

    @property
    def trained(self) -> tuple[int, float]:
        """Images and training-loop seconds of the epochs this call trained (not the resumed ones)."""
        done = [h for h in self.history if h.epoch > self.resumed_from_epoch]
        return sum(h.train_images for h in done), sum(h.train_seconds for h in done)

    @property
    def images_per_second(self) -> float:
        return images_per_second([self])


def images_per_second(results: list[FitResult]) -> float:
    """Training throughput over the epochs these calls trained (one run split by ``window``, or one)."""
    images = sum(r.trained[0] for r in results)
    seconds = sum(r.trained[1] for r in results)
    return images / seconds if seconds else 0.0


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, epochs: int) -> tuple[int, str | None]:
    """The steps of linear lr warm-up: ``warmup_fraction`` of the run, or ``warmup_epochs`` cut to a
    quarter of the run (with a note saying so: one epoch of warm-up in a one-epoch run never trains at
    the peak learning rate)."""
    total = steps_per_epoch * epochs
    if cfg.warmup_epochs is None:
        steps, note = int(cfg.warmup_fraction * total), None
    else:
        steps, note = int(cfg.warmup_epochs * steps_per_epoch), None
        if steps > total // 4:
            note = (f"train.warmup_epochs={cfg.warmup_epochs:g} is {steps} of this run's {total} steps: cut to "
                    f"{total // 4} (a quarter) -- fix: set train.warmup_fraction instead (it scales with the run)")
            steps = total // 4
    return min(steps, max(total - 1, 0)), note


def set_lr(scheduler: CosineLRScheduler, optimizer: torch.optim.Optimizer, step: int, scale: float = 1.0) -> None:
    """The schedule's learning rate at ``step``, times a stage's multiplier."""
    scheduler.step_update(step)
    if scale != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= scale


@dataclass
class _Loop:
    """What every epoch of one :func:`fit` call shares."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    plan: BatchPlan
    spec: InputSpec
    cfg: TrainConfig
    augment: str
    device: torch.device
    precision: str
    rank: distributed.Rank

    @property
    def use_amp(self) -> bool:
        return self.precision != "fp32"


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, plan: BatchPlan,
               console: Console) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """timm's AdamW and cosine schedule (per step, linear warm-up) over the whole plan."""
    # foreach: one fused kernel per step for all parameters (torch only picks it by itself on CUDA)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    warmup, cut = warmup_steps(cfg, plan.steps_per_epoch, plan.epochs)
    if cut:
        console.log(f"[yellow]warning:[/yellow] {cut}")
    scheduler = CosineLRScheduler(optimizer, t_initial=plan.steps_per_epoch * plan.epochs,
                                  lr_min=cfg.lr * cfg.min_lr_ratio, warmup_t=warmup, warmup_lr_init=cfg.lr * 0.01,
                                  t_in_epochs=False)
    return optimizer, scheduler


def train_one_epoch(loop: _Loop, epoch: int, step: int, progress, task) -> tuple[int, EpochRecord]:
    """One epoch of the plan: its batches, one optimiser step each; the step reached and the epoch's record
    (without validation)."""
    plan, cfg, device, rank, model = loop.plan, loop.cfg, loop.device, loop.rank, loop.model
    torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout / drop-path of this epoch
    order, aug = epoch_generator(cfg.seed, epoch, 0), epoch_generator(cfg.seed, epoch, 1)
    plan.begin_epoch(epoch, model)
    lr_scale = plan.lr_scale(epoch)
    set_lr(loop.scheduler, loop.optimizer, step, lr_scale)
    model.train()
    amp_dtype = torch.float16 if loop.precision == "fp16" else torch.bfloat16
    # running sums stay on the device; reading them (a sync on a GPU) happens every few steps
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    t0 = time.perf_counter()
    for i, (images, labels) in enumerate(plan.batches(epoch, order), start=1):
        labels = labels.to(device, non_blocking=True)
        x = to_model_input(images.to(device, non_blocking=True), loop.spec, augment=loop.augment, generator=aug)
        counted = True
        if rank.several and len(labels) >= rank.world:  # this process's share of the batch
            x, labels = x[rank.rank::rank.world], labels[rank.rank::rank.world]
        elif rank.several:  # a batch smaller than the processes: all take it, process 0 counts it
            counted = rank.main
        with torch.autocast(device.type, dtype=amp_dtype, enabled=loop.use_amp):
            logits = loop.net(x)
            loss = loop.loss_fn(logits.float(), labels, x)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if cfg.grad_clip:
            loop.scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        step += 1
        set_lr(loop.scheduler, loop.optimizer, step, lr_scale)
        n = len(labels) if counted else 0
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == labels).sum() if counted else 0
        seen += n
        if i % 25 == 0 or i == plan.steps_per_epoch:
            progress.update(task, completed=i, info=f"loss {float(loss_sum) / seen:.3f} "
                                                    f"acc {100 * float(correct) / seen:5.1f}%")
    train_seconds = time.perf_counter() - t0
    totals = [loss_sum, correct.float(), torch.tensor(float(seen), device=device)]
    loss_sum, correct, seen_all = distributed.total(totals, rank)
    seen = int(seen_all)
    return step, EpochRecord(epoch, step, loop.optimizer.param_groups[0]["lr"], loop.precision,
                             float(loss_sum) / max(seen, 1), 100 * float(correct) / max(seen, 1), seen, train_seconds,
                             seen / train_seconds if train_seconds else 0.0, plan.epoch_info(epoch))


def validate(model: torch.nn.Module, val: ImageSplit, spec: InputSpec, cfg: TrainConfig,
             device: torch.device) -> tuple[float, float]:
    """Cross-entropy and top-1 accuracy (%) on ``val`` (images with the targets the model is trained to output)."""
    logits = predict_logits(model, val, spec, batch_size=cfg.eval_batch_size, device=device,
                            num_workers=cfg.num_workers)
    return float(F.cross_entropy(logits, val.labels)), accuracy(logits, val.labels)


def _resume(run_dir: Path | None, resume: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            rank: distributed.Rank, result: FitResult, first: int, last: int, steps_per_epoch: int,
            console: Console) -> tuple[int, int]:
    """The step and epoch to go on from: after the last saved epoch (process 0's state, in every process;
    the weights reach the others when DDP starts, after this), or the window's start."""
    resumed = None
    if resume and run_dir is not None and rank.main and has_state(run_dir):
        meta = load_state(run_dir, model, optimizer)
        resumed = (meta, optimizer.state_dict())
    resumed = distributed.share(resumed, rank)
    if resumed is None:
        return (first - 1) * steps_per_epoch, first
    meta, optimizer_state = resumed
    if not rank.main:
        optimizer.load_state_dict(optimizer_state)
    result.history = [EpochRecord.from_json(h) for h in meta["history"]]
    result.resumed_from_epoch = meta["epoch"]
    console.log(f"resuming {run_dir} after epoch {meta['epoch']}/{last}")
    return meta["step"], meta["epoch"] + 1


def _keep(run_dir: Path, log, loop: _Loop, result: FitResult, record: EpochRecord) -> None:
    """The epoch's resumable state, its ``metrics.jsonl`` line and its ``train.log`` line."""
    history = [h.to_json() for h in result.history]
    save_state(run_dir, loop.model, loop.optimizer, epoch=record.epoch, step=record.step, history=history)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record.to_json()) + "\n")
    log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {record.epoch}/{loop.plan.epochs} {record.summary()}\n")
    log.flush()


def fit(model: torch.nn.Module, *, plan: BatchPlan, val: ImageSplit | None, spec: InputSpec,
        cfg: TrainConfig, augment: str, run_dir: Path | None = None, resume: bool = False,
        loss_fn: LossFn | None = None, console: Console | None = None, label: str = "train",
        window: tuple[int, int] | None = None, val_epochs: Collection[int] | None = None,
        deadline: float | None = None) -> FitResult:
    """Train ``model`` in place over the ``plan.epochs`` epochs of ``plan``.

    With ``run_dir`` set, every epoch appends to ``metrics.jsonl`` and ``train.log`` and saves a
    resumable state; with ``resume`` the loop continues after the last saved epoch. ``val`` holds
    images with the targets the model is trained to output. ``loss_fn(logits, targets, inputs)``
    defaults to cross-entropy with ``cfg.label_smoothing``.

    ``window=(first, last)`` trains only those epochs of the plan, on the learning-rate schedule of
    the whole plan: a run split where its model changes shape (an expert's head cut after its
    all-class stage) keeps one warm-up and one cosine decay. Each call starts a fresh optimizer.
    ``val_epochs`` limits the per-epoch validation (a log line) to those epochs (default: every one).
    ``deadline`` (a ``time.monotonic()`` value): stop at the first epoch boundary from which another epoch
    as long as the last would end past it (the state saved, ``stopped_after`` set; resume to go on).
    """
    console = console or stderr_console()
    device = resolve_device(cfg.device)
    model.to(device)
    first, last = window or (1, plan.epochs)
    if not 1 <= first <= last <= plan.epochs:
        raise ValueError(f"window {window} is outside the plan's {plan.epochs} epochs")
    rank = distributed.start(device)
    if rank.several and getattr(plan, "freezes", False):
        raise ConfigError("stages that freeze layers cannot train in several processes (DDP fixes the trained "
                          "parameters when it starts)", fix="train these experts in one process, or drop "
                          "freeze_stem / freeze_blocks from the stages")
    optimizer, scheduler = _optimizer(model, cfg, plan, console)
    precision = training_precision(device, cfg.amp)
    result = FitResult(precision=precision)
    step, start_epoch = _resume(run_dir, resume, model, optimizer, rank, result, first, last, plan.steps_per_epoch,
                                console)
    # several processes: DDP averages the gradients (and starts every process from process 0's weights)
    net = DistributedDataParallel(model, device_ids=[rank.local] if device.type == "cuda" else None) \
        if rank.several else model
    loop = _Loop(model, net, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
                 loss_fn or (lambda logits, y, _x: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)),
                 plan, spec, cfg, augment, device, precision, rank)
    log = (run_dir / "train.log").open("a") if run_dir is not None else None
    started = time.perf_counter()
    try:
        # bf16 on a CPU: explicit attention (bf16 matrix products), not the slow fused bf16 backward
        with progress_bar(console) as progress, explicit_attention(model, device.type == "cpu" and loop.use_amp):
            for epoch in range(start_epoch, last + 1):
                epoch_started = time.perf_counter()
                task = progress.add_task(f"{label} epoch {epoch}/{plan.epochs}", total=plan.steps_per_epoch, info="")
                step, record = train_one_epoch(loop, epoch, step, progress, task)
                if val is not None and len(val) and (val_epochs is None or epoch in val_epochs):
                    val_loss, val_acc = validate(model, val, spec, cfg, device)
                    record = replace(record, val_loss=val_loss, val_acc=val_acc)
                progress.update(task, info=record.summary())
                result.history.append(record)
                if run_dir is not None:
                    _keep(run_dir, log, loop, result, record)
                if deadline is not None and epoch < last and \
                        time.monotonic() + (time.perf_counter() - epoch_started) > deadline:
                    result.stopped_after = epoch
                    console.log(f"stopping after epoch {epoch}/{plan.epochs}: another would end past the deadline "
                                "(resume to go on)")
                    break
    finally:
        if log is not None:
            log.close()
    result.seconds = time.perf_counter() - started
    return result
