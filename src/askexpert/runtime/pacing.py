"""Paced edge compute: on an emulated edge every model call lasts the device's time for it, and other
work the device's time for scalar code.

Two ways, set per process (the edge worker's):

- **The device model** (:func:`set_device`, ``--edge-mode model``, the default): a model call runs at the
  host's full speed, then sleeps until it has lasted the time the device model predicts for that graph
  (:mod:`askexpert.costs.device_model`: batch-1 time x images; the published figures are batch 1). Other
  work wrapped in :func:`dilated` (encoding, the HTTP exchange) sleeps after itself for the CPU time it
  used x (the device's scalar slowdown - 1): sysbench's single-core figure for the device against the
  host's. No kernel quota, so no quota periods: a call lasts its prediction however the host's scheduler
  hands out time, as long as the host computes it faster than the device would.
- **One ratio** (:func:`set_pace`, the older ``kernel`` and ``paced`` modes): each model call lasts at
  least its CPU time x the reference model's host-to-device ratio.

With neither set (the default) both cost one comparison a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from askexpert.costs.device_model import DeviceModel, GraphFeatures, graph_features

T = TypeVar("T")
_factor = 1.0
_device: DeviceModel | None = None
_scalar = 1.0
_features: dict[str, GraphFeatures] = {}
_clock = time.perf_counter
_sleep = time.sleep


def set_pace(factor: float) -> None:
    global _factor
    if factor < 1.0:
        raise ValueError(f"a pace factor slows the edge down: {factor} < 1")
    _factor = float(factor)


def set_device(model: DeviceModel | dict | None, scalar_ratio: float = 1.0) -> None:
    """Pace model calls to ``model``'s predictions and dilate other work by ``scalar_ratio`` (None: off)."""
    global _device, _scalar
    if scalar_ratio < 1.0:
        raise ValueError(f"a scalar slowdown slows the edge down: {scalar_ratio} < 1")
    _device = DeviceModel.from_dict(model) if isinstance(model, dict) else model
    _scalar = float(scalar_ratio)


def use_clock(clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """Replace the clock and the sleep (a test's fake clock); ``use_clock(time.perf_counter, time.sleep)``
    restores them."""
    global _clock, _sleep
    _clock, _sleep = clock, sleep


def device_ms(graph: Path | str, images: int = 1) -> float | None:
    """The device's predicted time for ``images`` batch-1 calls of ``graph`` (None: no device model)."""
    if _device is None:
        return None
    key = str(graph)
    if key not in _features:
        _features[key] = graph_features(graph)
    return _device.predict_ms(_features[key]) * images


def paced(call: Callable[[], T], graph: Path | str | None = None, images: int = 1) -> T:
    """``call()`` (a model call on ``images`` images of ``graph``), lasting the device's time for it."""
    if _device is not None and graph is not None:
        target_s = device_ms(graph, images) / 1000
        w0 = _clock()
        out = call()
        rest = target_s - (_clock() - w0)
        if rest > 0:
            _sleep(rest)
        return out
    if _factor == 1.0:
        return call()
    w0, c0 = time.perf_counter(), time.process_time()
    out = call()
    rest = (time.process_time() - c0) * _factor - (time.perf_counter() - w0)
    if rest > 0:
        time.sleep(rest)
    return out


def dilated(call: Callable[[], T]) -> T:
    """``call()`` (the edge's own non-model work), followed by a sleep of its CPU time x (scalar slowdown - 1)."""
    if _scalar == 1.0:
        return call()
    c0 = time.process_time()
    out = call()
    rest = (time.process_time() - c0) * (_scalar - 1.0)
    if rest > 0:
        _sleep(rest)
    return out
