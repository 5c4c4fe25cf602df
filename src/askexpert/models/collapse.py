"""An expert that keeps its all-class head: its answer is that head collapsed onto its subset + "other".

``CollapseHead`` wraps a model's linear classifier over every class. It answers with the subset's
logits followed by the log-sum-exp of all the other classes' logits as the "other" logit, so the
softmax gives "other" exactly the probability the full head puts outside the subset. With
``wide`` set it answers with the full head instead (the all-class stages of progressive training).
No weight is cut or made up where training narrows from every class to the subset: one model, one
head and one optimiser from the first step to the last.

``askexpert_collapsed`` (registered with timm) rebuilds such an expert from its spec alone:
``timm.create_model("askexpert_collapsed", base=..., base_classes=..., subset=[...], num_classes=len(subset) + 1,
**base_kwargs)``.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
from timm.models import register_model


class CollapseHead(nn.Module):
    """A full-width linear head answering as subset + "other" (or, ``wide``, as the full head)."""

    def __init__(self, linear: nn.Module, subset: list[int]) -> None:
        super().__init__()
        self.linear = linear
        n = linear.out_features
        rest = [c for c in range(n) if c not in set(subset)]
        self.register_buffer("subset", torch.tensor(subset, dtype=torch.int64), persistent=False)
        self.register_buffer("rest", torch.tensor(rest, dtype=torch.int64), persistent=False)
        self.wide = False
        self.out_features = len(subset) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        if self.wide:
            return logits
        inside = logits.index_select(1, self.subset)
        if self.rest.numel() == 0:
            return torch.cat([inside, torch.full_like(inside[:, :1], -1e4)], 1)
        other = torch.logsumexp(logits.index_select(1, self.rest), dim=1, keepdim=True)
        return torch.cat([inside, other], 1)


def classifier_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("classifier", "head") if isinstance(cfg, dict) else getattr(cfg, "classifier", "head")


def collapse_head(model: nn.Module, subset: list[int]) -> CollapseHead:
    """Wrap ``model``'s classifier in place (it must be one linear layer); returns the new head."""
    name = classifier_name(model)
    linear = model.get_submodule(name)
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{type(model).__name__}.{name} is {type(linear).__name__}, not a linear classifier")
    head = CollapseHead(linear, subset)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, head)
    return head


def head_of(model: nn.Module) -> CollapseHead | None:
    head = model.get_submodule(classifier_name(model)) if hasattr(model, "get_submodule") else None
    return head if isinstance(head, CollapseHead) else None


@register_model
def askexpert_collapsed(pretrained: bool = False, *, base: str, base_classes: int, subset: list[int],
                        num_classes: int, **kwargs) -> nn.Module:
    """The model ``base`` over ``base_classes`` classes whose head answers as ``subset`` + "other"."""
    if num_classes != len(subset) + 1:
        raise ValueError(f"an expert over {len(subset)} classes has {len(subset) + 1} outputs, not {num_classes}")
    model = timm.create_model(base, pretrained=False, num_classes=base_classes, **kwargs)
    collapse_head(model, list(subset))
    return model
