"""Batch plans: what the training loop sees in each epoch.

``SplitPlan`` shuffles one split, epoch after epoch. ``MixturePlan`` is how experts are fed: each
epoch belongs to a stage, and a stage's batches hold a fixed share of images from outside the
expert's subset (their target is the "other" output), optionally drawn towards the classes the
generalist confuses with the subset, while in-subset images are optionally drawn towards those the
general model finds hard. A stage with ``labels: all`` draws from every class with its true label
instead (for a full-width head). Every draw comes from the epoch's seeded generator, and every
epoch of a plan has the same steps and images, whatever its stage: that is the expert's budget.

Plans may also steer the loop per epoch: ``begin_epoch(epoch, model)`` (freezing, the objective's
stage) and ``lr_scale(epoch)`` (a multiplier on the learning-rate schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from askexpert.config import StageConfig
from askexpert.data import ImageSplit, iter_batches
from askexpert.errors import ConfigError


class BatchPlan(Protocol):
    epochs: int
    steps_per_epoch: int

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def epoch_info(self, epoch: int) -> dict: ...

    def begin_epoch(self, epoch: int, model: torch.nn.Module) -> None: ...

    def lr_scale(self, epoch: int) -> float: ...


@dataclass
class SplitPlan:
    """Every image of ``split`` once an epoch, in a fresh order (a last partial batch is dropped)."""

    split: ImageSplit
    batch_size: int
    epochs: int
    num_workers: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.split) // self.batch_size)

    def batches(self, epoch: int, generator: torch.Generator):
        yield from iter_batches(self.split, self.batch_size, shuffle=True, generator=generator,
                                drop_last=len(self.split) >= self.batch_size, num_workers=self.num_workers)

    def epoch_info(self, epoch: int) -> dict:
        return {}

    def begin_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        return None

    def lr_scale(self, epoch: int) -> float:
        return 1.0


def _mix(weights: torch.Tensor | None, strength: float) -> torch.Tensor | None:
    """(1 - strength) * uniform + strength * weights (normalised), or None for plain uniform."""
    if weights is None or strength <= 0:
        return None
    w = weights.float().clamp_min(0)
    w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(w))
    return (1 - strength) / len(w) + strength * w


def _draw(n_pool: int, count: int, weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """``count`` positions in a pool: whole permutations (uniform) or a weighted draw with replacement."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.int64)
    if weights is None:
        reps = math.ceil(count / n_pool)
        return torch.cat([torch.randperm(n_pool, generator=generator) for _ in range(reps)])[:count]
    return torch.multinomial(weights, count, replacement=True, generator=generator)


@dataclass
class MixturePlan:
    """Stage-wise mixtures of in-subset and out-of-subset images for one expert.

    ``targets`` holds every training image's target (its subset position, or the "other" index);
    ``hardness`` (in-subset) and ``negative_weight`` (out-of-subset) steer the draws when a stage's
    ``focus`` or the plan's ``hard_negatives`` is above zero.
    """

    split: ImageSplit
    targets: torch.Tensor
    in_subset: torch.Tensor  # indices into split
    out_subset: torch.Tensor
    stages: list[StageConfig]
    batch_size: int
    epochs: int
    hardness: torch.Tensor | None = None  # [len(in_subset)]
    negative_weight: torch.Tensor | None = None  # [len(out_subset)]
    hard_negatives: float = 0.0
    on_stage: Callable[[StageConfig], None] | None = None  # told each epoch's stage (the objective's weights)
    _bounds: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        acc = 0.0
        for stage in self.stages:
            acc += stage.fraction
            self._bounds.append(acc)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.in_subset) / self.batch_size))

    def stage_index(self, epoch: int) -> int:
        position = (epoch - 0.5) / self.epochs  # the middle of the epoch
        return next((i for i, b in enumerate(self._bounds) if position < b + 1e-9), len(self.stages) - 1)

    def stage(self, epoch: int) -> StageConfig:
        return self.stages[self.stage_index(epoch)]

    def wide_epochs(self) -> int:
        """How many leading epochs train on every class with true labels (``labels: all`` stages)."""
        return sum(1 for epoch in range(1, self.epochs + 1) if self.stage(epoch).labels == "all")

    @property
    def freezes(self) -> bool:
        return any(s.freeze_stem or s.freeze_blocks for s in self.stages)

    def epoch_info(self, epoch: int) -> dict:
        i = self.stage_index(epoch)
        stage = self.stages[i]
        info = {"stage": i + 1, "labels": stage.labels, "out_share": stage.out_share, "focus": stage.focus}
        if stage.lr_scale != 1.0:
            info["lr_scale"] = stage.lr_scale
        return info

    def lr_scale(self, epoch: int) -> float:
        return self.stage(epoch).lr_scale

    def begin_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        stage = self.stage(epoch)
        set_frozen(model, stem=stage.freeze_stem, blocks=stage.freeze_blocks)
        if self.on_stage is not None:
            self.on_stage(stage)

    def batches(self, epoch: int, generator: torch.Generator):
        stage = self.stage(epoch)
        steps = self.steps_per_epoch
        if stage.labels == "all":  # every class, true labels: the same steps and images as any other epoch
            pos = _draw(len(self.split), steps * self.batch_size, None, generator)
            for s in range(steps):
                idx = pos[s * self.batch_size:(s + 1) * self.batch_size]
                yield self.split.load(idx), self.split.labels[idx]
            return
        n_out = int(round(stage.out_share * self.batch_size)) if len(self.out_subset) else 0
        n_in = self.batch_size - n_out
        in_pos = _draw(len(self.in_subset), steps * n_in, _mix(self.hardness, stage.focus), generator)
        out_pos = _draw(len(self.out_subset), steps * n_out, _mix(self.negative_weight, self.hard_negatives),
                        generator)
        in_idx, out_idx = self.in_subset[in_pos], self.out_subset[out_pos] if n_out else self.out_subset[:0]
        for s in range(steps):
            idx = torch.cat([in_idx[s * n_in:(s + 1) * n_in], out_idx[s * n_out:(s + 1) * n_out]])
            yield self.split.load(idx), self.targets[idx]


def set_frozen(model: torch.nn.Module, *, stem: bool = False, blocks: int = 0) -> None:
    """Train every parameter, except the stem (patch and position embeddings) with ``stem`` and the
    first ``blocks`` transformer blocks. A frozen parameter gets no gradient, so AdamW leaves it
    (and its weight decay) alone."""
    for p in model.parameters():
        p.requires_grad_(True)
    frozen: list[torch.nn.Module | torch.nn.Parameter] = []
    if stem:
        frozen += [getattr(model, name) for name in ("patch_embed", "pos_embed", "cls_token", "reg_token")
                   if getattr(model, name, None) is not None]
    if blocks:
        layers = getattr(model, "blocks", None)
        if layers is None or blocks > len(layers):
            raise ConfigError(f"cannot freeze {blocks} blocks of {type(model).__name__} "
                              f"({len(layers) if layers is not None else 'no'} transformer blocks)",
                              fix="lower the stage's freeze_blocks")
        frozen += list(layers[:blocks])
    for part in frozen:
        for p in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters()):
            p.requires_grad_(False)
