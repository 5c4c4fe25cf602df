"""Re-routing on the server: when the routed expert says "other" (or answers under a confidence the
bundle sets on validation), the server asks the next expert of the generalist's ranking, or the
general model, within the same request: no second trip over the network.

One rule, three users: the server applies it (:mod:`askexpert.serving.app`), the edge asks for it and
reads each try (:mod:`askexpert.runtime.edge`), and the offline evaluation simulates it
(:mod:`askexpert.routing.metrics`), so the live answer equals the offline one image by image.

    tries     experts asked at most, the routed one included (1: no re-routing)
    to        "next": the generalist's ranking of the experts, in order; "general": the general model
    below     re-ask when the answer's confidence is under this (0: on "other" only)

Which answer stands (:func:`settle`): the first try that is neither "other" nor under ``below``; when
every try is, the most confident answer that is not "other" (the earliest on a tie); when every try
says "other", "other" (the edge then keeps the generalist's answer). Experts without an "other"
output re-route on confidence only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from askexpert.contract.labels import GENERAL, OTHER
from askexpert.errors import ConfigError

RerouteTo = Literal["next", "general"]


class RerouteError(ConfigError):
    """A re-routing rule that cannot be applied (or a ``next`` parameter that is not a ranking); names the fix."""


@dataclass(frozen=True)
class Reroute:
    tries: int
    to: RerouteTo = "next"
    below: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.tries, int) or self.tries < 1:
            raise RerouteError(f"a re-route cap of {self.tries} tries: the routed expert is always asked, so the cap "
                               "is at least 1", fix="--reroute-tries 2 or more (1: no re-routing)")
        if self.to not in ("next", "general"):
            raise RerouteError(f"re-route to {self.to!r}: the server re-asks the next expert or the general model",
                               fix="--reroute next or --reroute general")
        if not 0.0 <= self.below <= 1.0:
            raise RerouteError(f"re-route below confidence {self.below}: a confidence is in [0, 1]",
                               fix="a value in [0, 1] (0: on 'other' only)")

    @property
    def active(self) -> bool:
        return self.tries > 1

    def retry(self, pred: int, confidence: float) -> bool:
        """Whether this answer sends the image on to the next try."""
        return pred == OTHER or confidence < self.below

    def chain(self, routed: str, ranking: Sequence[str]) -> list[str]:
        """The experts asked, in order, at most ``tries``: the routed expert, then the rest of the
        generalist's ``ranking`` (``next``) or the general model (``general``)."""
        rest = [GENERAL] if self.to == "general" else [e for e in ranking if e != routed]
        return [routed, *rest][: self.tries]

    def to_dict(self) -> dict:
        return {"tries": self.tries, "to": self.to, "below": self.below}


def settle(rule: Reroute, answers: Sequence[tuple[int, float]]) -> int:
    """The index of the try whose answer stands, among ``answers`` ((pred, confidence) of each try so far,
    in order; the last one need not be final only when the chain ended there)."""
    for i, (pred, conf) in enumerate(answers):
        if not rule.retry(pred, conf):
            return i
    best = -1
    for i, (pred, conf) in enumerate(answers):
        if pred != OTHER and (best < 0 or conf > answers[best][1]):
            best = i
    return best if best >= 0 else len(answers) - 1


def parse_next(value: str | None) -> list[str]:
    """The ``next`` query parameter of an infer request: the generalist's ranking of the other experts,
    comma-separated ids ("" or absent: none)."""
    if not value:
        return []
    ids = [v.strip() for v in value.split(",")]
    if any(not v for v in ids) or len(ids) > 64:
        raise RerouteError(f"next must be up to 64 comma-separated expert ids, got {value[:80]!r}",
                           fix="send the generalist's ranking of the other experts, e.g. next=2,0")
    return ids
