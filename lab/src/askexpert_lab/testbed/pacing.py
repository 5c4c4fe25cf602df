"""The emulated edge's pacers (:class:`askexpert.runtime.pacing.Pacer`): a model call lasts the device's
time for it, other work the device's time for scalar code.

- **The device model** (:class:`DevicePacer`, ``--edge-mode model``, the default): a model call runs at
  the host's full speed, then sleeps until it has lasted the time the device model predicts for that
  graph (:mod:`askexpert.costs.device_model`: batch-1 time x images; the published figures are batch 1).
  Other work (encoding, the HTTP exchange) sleeps after itself for the CPU time it used x (the device's
  scalar slowdown - 1): sysbench's single-core figure for the device against the host's. No kernel quota,
  so no quota periods: a call lasts its prediction however the host's scheduler hands out time, as long as
  the host computes it faster than the device would.
- **One ratio** (:class:`RatioPacer`, the older ``kernel`` and ``paced`` modes): each model call lasts at
  least its CPU time x the reference model's host-to-device ratio.

Both are plain picklable objects: the bench sends one with every call to the edge's process
(:meth:`askexpert_lab.testbed.placement.EmulatedEdge.call`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from askexpert.costs.device_model import DeviceModel, GraphFeatures, graph_features

T = TypeVar("T")


def _dilate(call: Callable[[], T], scalar: float, sleep: Callable[[float], None]) -> T:
    if scalar == 1.0:
        return call()
    c0 = time.process_time()
    out = call()
    rest = (time.process_time() - c0) * (scalar - 1.0)
    if rest > 0:
        sleep(rest)
    return out


@dataclass
class DevicePacer:
    """Model calls at ``model``'s predictions, other work dilated by ``scalar_ratio`` (>= 1)."""

    model: DeviceModel | None  # None: model calls at the host's speed, only other work dilated
    scalar_ratio: float = 1.0
    clock: Callable[[], float] = time.perf_counter  # a test's fake clock and sleep replace these
    sleep: Callable[[float], None] = time.sleep
    _features: dict[str, GraphFeatures] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = DeviceModel.from_dict(self.model)
        if self.scalar_ratio < 1.0:
            raise ValueError(f"a scalar slowdown slows the edge down: {self.scalar_ratio} < 1")
        self.scalar_ratio = float(self.scalar_ratio)

    def device_ms(self, graph: Path | str, images: int = 1) -> float:
        """The device's predicted time for ``images`` batch-1 calls of ``graph``."""
        key = str(graph)
        if key not in self._features:
            self._features[key] = graph_features(graph)
        return self.model.predict_ms(self._features[key]) * images

    def paced(self, call: Callable[[], T], graph: Path | str | None = None, images: int = 1) -> T:
        if graph is None or self.model is None:
            return call()
        target_s = self.device_ms(graph, images) / 1000
        w0 = self.clock()
        out = call()
        rest = target_s - (self.clock() - w0)
        if rest > 0:
            self.sleep(rest)
        return out

    def dilated(self, call: Callable[[], T]) -> T:
        return _dilate(call, self.scalar_ratio, self.sleep)


@dataclass(frozen=True)
class RatioPacer:
    """Each model call lasts at least its CPU time x ``factor`` (>= 1); other work at the host's speed."""

    factor: float

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"a pace factor slows the edge down: {self.factor} < 1")

    def paced(self, call: Callable[[], T], graph: Path | str | None = None, images: int = 1) -> T:
        if self.factor == 1.0:
            return call()
        w0, c0 = time.perf_counter(), time.process_time()
        out = call()
        rest = (time.process_time() - c0) * self.factor - (time.perf_counter() - w0)
        if rest > 0:
            time.sleep(rest)
        return out

    def dilated(self, call: Callable[[], T]) -> T:
        return call()
