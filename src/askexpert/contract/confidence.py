"""The confidence rules: how the edge scores its own answer before comparing it with tau. One registry,
:data:`RULES`: a rule named there is what ``system.json`` accepts (``routing.confidence``), what
``--confidence`` offers, what the routing policy scores with and what calibration chooses tau for. A new rule
is one entry here.

A rule either scores the generalist's calibrated probabilities alone (``score``: NumPy, higher is surer) or
is *fitted*: a deferral rule learned on validation (:mod:`askexpert.routing.deferral`), which only a bundle
built with ``--deferral learned`` carries, beside its fitted parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (probs [N, C], the top two of each row [N, <=2]) -> [N]


def _max_prob(p: np.ndarray, top: np.ndarray) -> np.ndarray:
    return top[:, 0]


def _margin(p: np.ndarray, top: np.ndarray) -> np.ndarray:
    second = top[:, 1] if top.shape[1] > 1 else np.sort(p, 1)[:, -2]
    return top[:, 0] - second


def _entropy(p: np.ndarray, top: np.ndarray) -> np.ndarray:
    ent = -(p * np.log(np.maximum(p, 1e-12))).sum(1)
    return 1.0 - ent / np.log(p.shape[1])


@dataclass(frozen=True)
class ConfidenceRule:
    name: str
    meaning: str
    score: Score | None  # None: a fitted rule (its score needs the fitted parameters and the experts)

    @property
    def fitted(self) -> bool:
        return self.score is None


RULES = {r.name: r for r in (
    ConfidenceRule("max-prob", "the generalist's highest calibrated probability", _max_prob),
    ConfidenceRule("margin", "the highest probability less the second", _margin),
    ConfidenceRule("entropy", "one less the probabilities' entropy over its maximum", _entropy),
    ConfidenceRule("learned", "a deferral rule fitted on validation (build-system --deferral learned)", None),
)}
CONFIDENCE_RULES = tuple(n for n, r in RULES.items() if not r.fitted)  # what --confidence offers
FITTED_RULE = next(n for n, r in RULES.items() if r.fitted)  # the confidence a fitted deferral rule routes by
Confidence = Literal[tuple(RULES)]  # what system.json's routing.confidence and a RoutingPolicy accept


def rule(name: str) -> ConfidenceRule:
    """The rule called ``name``; a ValueError naming the rules otherwise."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown confidence {name!r}: use {', '.join(CONFIDENCE_RULES)}") from None
