"""What an expert is trained toward: the general model's head cut to a subset plus "other", the loss (labels,
distillation of the general model, Learning without Forgetting), the collapsed head's spec."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from askexpert.config import StageConfig
from askexpert.errors import ConfigError
from askexpert.models import (
    ModelSpec,
)
from askexpert.models.collapse import CollapseHead


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


def collapse_logits(logits: torch.Tensor, subset: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """A full-width model's answer as an expert's: its subset's logits, then the log-sum-exp of the rest
    as the "other" logit (so softmax gives "other" exactly the probability of all the other classes)."""
    inside = logits[:, subset.to(logits.device)]
    if len(rest) == 0:
        return torch.cat([inside, torch.full_like(inside[:, :1], -1e4)], 1)
    return torch.cat([inside, torch.logsumexp(logits[:, rest.to(logits.device)], dim=1, keepdim=True)], 1)


class ExpertObjective:
    """Cross-entropy on subset/"other" targets, optionally mixed with distillation from the general
    model (``distill``) and from the expert's own earlier state (``lwf``, set per stage).

    A teacher's all-class logits are collapsed onto the expert's outputs exactly
    (:func:`collapse_logits`).
    """

    def __init__(self, *, subset: list[int], label_smoothing: float, teacher: torch.nn.Module | None = None,
                 distill: float = 0.0, temperature: float = 2.0, earlier: torch.nn.Module | None = None,
                 head: CollapseHead | None = None) -> None:
        self.subset = torch.tensor(subset)
        self.label_smoothing = label_smoothing
        self.teacher, self.distill, self.temperature = teacher, distill, temperature
        self.earlier, self.lwf = earlier, 0.0
        self.rest: torch.Tensor | None = None
        self.head, self.wide = head, False  # a kept all-class head: full width in the all-class stages

    def set_stage(self, stage: StageConfig) -> None:
        self.lwf = stage.lwf if self.earlier is not None else 0.0
        self.wide = stage.labels == "all"
        if self.head is not None:
            self.head.wide = self.wide

    def collapse(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.rest is None:
            mask = torch.ones(teacher_logits.shape[1], dtype=torch.bool)
            mask[self.subset] = False
            self.rest = torch.nonzero(mask).flatten()
        return collapse_logits(teacher_logits, self.subset, self.rest)

    def _kd(self, logits: torch.Tensor, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = self.collapse(model(inputs).float())
        t = self.temperature
        return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(soft / t, 1), log_target=True,
                        reduction="batchmean") * t * t

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.wide:  # every class with its true label: plain cross-entropy, as the all-class stage of "cut" trains
            return loss
        distill = self.distill if self.teacher is not None else 0.0
        if distill <= 0 and self.lwf <= 0:
            return loss
        total = (1 - distill - self.lwf) * loss
        if distill > 0:
            total = total + distill * self._kd(logits, self.teacher, inputs)
        if self.lwf > 0:
            total = total + self.lwf * self._kd(logits, self.earlier, inputs)
        return total


def collapsed_spec(spec: ModelSpec, subset: list[int]) -> ModelSpec:
    """The spec of ``spec``'s model with its all-class head answering as ``subset`` + "other"."""
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}
    return spec.model_copy(update={"timm_name": "askexpert_collapsed", "kwargs": {
        "base": spec.timm_name, "base_classes": spec.num_classes, "subset": list(subset),
        "num_classes": len(subset) + 1, **kwargs}})
