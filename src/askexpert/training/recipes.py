"""How each expert is trained: the strategy's stages, the draws' steering (the general model's confusion and
hardness, or the router's view), where it starts (general, scratch, pretrained), and the budget it is held to."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from askexpert.config import ExpertsConfig, ModelConfig, RunConfig, StageConfig
from askexpert.data import DatasetSplits
from askexpert.errors import ConfigError
from askexpert.models import (
    Checkpoint,
    ModelSpec,
    build_model,
    resolve_spec,
)
from askexpert.models.checkpoint import checkpoint_stem, open_checkpoint
from askexpert.models.starts import committed_weights
from askexpert.training.logits import cached_logits
from askexpert.training.objective import ExpertObjective
from askexpert.training.partition import confusion_affinity
from askexpert.training.plans import MixturePlan


def strategy_stages(cfg: ExpertsConfig) -> list[StageConfig]:
    if cfg.strategy == "static":
        return [StageConfig(fraction=1.0, out_share=0.0, focus=0.0)]
    if cfg.strategy == "static-other":
        return [StageConfig(fraction=1.0, out_share=cfg.other_share, focus=0.0)]
    return cfg.stages


@dataclass
class Steering:
    """What steers the progressive draws: per-training-image hardness of in-subset images (focus),
    and either a class-level affinity (general model's confusion) or the router's per-image
    probabilities (to weigh out-of-subset images by the probability mass it puts on a subset)."""

    hardness: torch.Tensor | None  # [N train]
    class_affinity: torch.Tensor | None  # [C, C]
    router_probs: torch.Tensor | None  # [N train, C]
    images: int = 0  # images the general model or router forwarded for the draws that use them (once a run)

    def negative_weight(self, labels: torch.Tensor, out_subset: torch.Tensor, subset: list[int]) -> torch.Tensor:
        if self.router_probs is not None:
            return self.router_probs[out_subset][:, subset].sum(1)
        return self.class_affinity[labels[out_subset]][:, subset].sum(1)


def draw_steering(general: Checkpoint, ecfg: ExpertsConfig, splits: DatasetSplits, cfg: RunConfig, device) -> Steering:
    focus = any(s.focus > 0 for s in strategy_stages(ecfg))
    if ecfg.strategy == "progressive" and ecfg.router is not None:
        if not checkpoint_stem(ecfg.router).with_suffix(".json").is_file():
            raise ConfigError(f"experts.router {ecfg.router} holds no trained model",
                              fix="pass the edge generalist's run directory (askexpert train generalist)")
        router = open_checkpoint(ecfg.router)
        if router.meta.class_names != splits.class_names:
            raise ConfigError(f"the router {ecfg.router} predicts other classes than {splits.name} has",
                              fix="pass the generalist trained on the dataset of this run")
        logits, _ = cached_logits(router, "train", data_cfg=cfg.data, device=str(device),
                                  batch_size=cfg.train.eval_batch_size)
        probs = torch.softmax(logits, 1)
        used = focus or ecfg.hard_negatives > 0
        return Steering(1 - probs.max(1).values if focus else None, None, probs, len(splits.train) if used else 0)
    negatives = ecfg.strategy == "progressive" and ecfg.hard_negatives > 0
    return Steering(_general_hardness(general, splits, cfg, device) if focus else None,
                    _general_confusion(general, splits, cfg, device), None,
                    len(splits.train) * focus + len(splits.val) * negatives)


def _general_confusion(general: Checkpoint, splits: DatasetSplits, cfg: RunConfig, device) -> torch.Tensor:
    """Affinity between classes from the general model's validation confusion (for hard negatives)."""
    logits, labels = cached_logits(general.stored, "val", data_cfg=cfg.data, splits=splits, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    n = splits.num_classes
    confusion = torch.bincount(labels * n + logits.argmax(1), minlength=n * n).reshape(n, n)
    return confusion_affinity(confusion)


def _general_hardness(general: Checkpoint, splits: DatasetSplits, cfg: RunConfig, device) -> torch.Tensor:
    """1 - the general model's probability of the true class, for every training image."""
    logits, labels = cached_logits(general.stored, "train", data_cfg=cfg.data, splits=splits, device=str(device),
                                   batch_size=cfg.train.eval_batch_size)
    p_true = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    return 1 - p_true


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of a model's weights (names, shapes and bytes, in order): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class Start:
    """Where an expert starts: an all-class model (never trained in place), and what it is."""

    model: torch.nn.Module
    spec: ModelSpec
    source: str  # general | scratch (seed N) | pretrained (file)
    sha256: str


def starting_model(ecfg: ExpertsConfig, cfg: RunConfig, general: Checkpoint, splits: DatasetSplits) -> Start:
    """The all-class model every expert of this run starts from (``experts.init_from``)."""
    spec = general.meta.model
    if ecfg.init_from == "general":
        return Start(general.model, spec, f"the general model {ecfg.init}", general.meta.weights_sha256)
    if ecfg.init_from == "scratch":
        seed = cfg.train.seed if ecfg.init_seed is None else ecfg.init_seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(spec)
        return Start(model, spec, f"random weights (seed {seed})", weights_sha256(model))
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}
    file = cfg.model.pretrained_file or committed_weights(spec.name, cfg.data.name)  # else timm's published weights
    mcfg = ModelConfig(name=spec.timm_name, kwargs=kwargs, pretrained=True, pretrained_file=str(file) if file else None)
    pspec, _ = resolve_spec(mcfg, num_classes=splits.num_classes, mean=splits.mean, std=splits.std)
    if pspec.input.size != spec.input.size or pspec.input.channels != spec.input.channels:
        raise ConfigError(f"pretrained {pspec.timm_name} expects {pspec.input.channels}x{pspec.input.size}^2 "
                          f"images, the general model {spec.input.channels}x{spec.input.size}^2",
                          fix="train the general model at the pretrained weights' input size")
    pspec = pspec.model_copy(update={"name": spec.name})
    seed = cfg.train.seed if ecfg.init_seed is None else ecfg.init_seed
    with torch.random.fork_rng(devices=[]):  # a new head where the pretrained one has other classes: seeded, so
        torch.manual_seed(seed)  # every recipe of a seed starts from the same weights
        model = build_model(pspec, pretrained=True)
    return Start(model, pspec, f"pretrained weights ({pspec.pretrained_source})", weights_sha256(model))


@dataclass(frozen=True)
class Budget:
    """What training an expert costs: optimiser steps, images seen (of them, on every class with its own
    label), teacher forward passes (each distilled image once per teacher), and the general model's or
    router's passes over the training images that steer the draws (shared by every expert of the run)."""

    passes: int
    steps: int
    images: int
    wide_images: int
    teacher_images: int
    steering_images_shared: int


def spent_budget(plan: MixturePlan, objective: ExpertObjective, distill: float, steering_images: int) -> Budget:
    per_epoch = plan.steps_per_epoch * plan.batch_size
    teacher = 0
    for epoch in range(1, plan.epochs + 1):
        stage = plan.stage(epoch)
        if stage.labels == "subset":
            teacher += per_epoch * ((distill > 0) + (stage.lwf > 0 and objective.earlier is not None))
    return Budget(plan.epochs, plan.epochs * plan.steps_per_epoch, plan.epochs * per_epoch,
                  plan.wide_epochs() * per_epoch, teacher, steering_images)
