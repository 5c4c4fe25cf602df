"""The routing policy's cost one image at a time, as an edge streaming images pays it: a module-level
function, so the emulated edge device's process can run it (``EmulatedEdge.call``)."""

from __future__ import annotations

import time

import numpy as np

from askexpert.routing import Router


def route_cost_us(router: Router, logits: np.ndarray, calls: int = 20000) -> float:
    """Mean microseconds of one batch-1 ``router.route`` over ``calls`` calls, cycling through the rows of
    ``logits``. The wall clock over the whole loop, not a median of single calls: under a CPU quota most
    calls run at full speed and a few wait out the throttled rest of a period, and only the mean sees both."""
    rows = [np.ascontiguousarray(logits[i:i + 1]) for i in range(len(logits))]
    for row in rows[:50]:
        router.route(row)
    t0 = time.perf_counter()
    for i in range(calls):
        router.route(rows[i % len(rows)])
    return (time.perf_counter() - t0) / calls * 1e6
