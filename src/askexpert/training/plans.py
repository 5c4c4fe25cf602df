"""Batch plans: what the training loop sees in each epoch.

``SplitPlan`` shuffles one split, epoch after epoch. ``MixturePlan`` is how experts are fed: each
epoch belongs to a stage, and a stage's batches hold a fixed share of images from outside the
expert's subset (their target is the "other" output), optionally drawn towards the classes the
generalist confuses with the subset, while in-subset images are optionally drawn towards those the
general model finds hard. Every draw comes from the epoch's seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from askexpert.config import StageConfig
from askexpert.data import ImageSplit, iter_batches


class BatchPlan(Protocol):
    epochs: int
    steps_per_epoch: int

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def epoch_info(self, epoch: int) -> dict: ...


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

    def epoch_info(self, epoch: int) -> dict:
        i = self.stage_index(epoch)
        return {"stage": i + 1, "out_share": self.stages[i].out_share, "focus": self.stages[i].focus}

    def batches(self, epoch: int, generator: torch.Generator):
        stage = self.stages[self.stage_index(epoch)]
        n_out = int(round(stage.out_share * self.batch_size)) if len(self.out_subset) else 0
        n_in = self.batch_size - n_out
        steps = self.steps_per_epoch
        in_pos = _draw(len(self.in_subset), steps * n_in, _mix(self.hardness, stage.focus), generator)
        out_pos = _draw(len(self.out_subset), steps * n_out, _mix(self.negative_weight, self.hard_negatives),
                        generator)
        in_idx, out_idx = self.in_subset[in_pos], self.out_subset[out_pos] if n_out else self.out_subset[:0]
        for s in range(steps):
            idx = torch.cat([in_idx[s * n_in:(s + 1) * n_in], out_idx[s * n_out:(s + 1) * n_out]])
            yield self.split.load(idx), self.targets[idx]
