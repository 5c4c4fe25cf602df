"""Paced edge compute: every model call on an emulated edge lasts at least its CPU time x the device's
slowdown (a sleep makes up the difference).

Where the kernel cannot throttle the edge (no writable cgroup) this *is* the emulation: each model
call runs at full speed and then sleeps to the device's speed; only model compute is paced (the
router, encoding and HTTP run at the host's speed), which is why those figures are labelled "paced".
Under a kernel CPU quota it is a floor: the quota is enforced per period, so a call that starts with
a fresh period's budget (after the edge idled waiting for the server) would otherwise finish at
full speed; the floor keeps every model call at the device's speed, and the quota slows the rest.

The factor is per process (the edge worker's); 1.0, the default, costs one comparison a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_factor = 1.0


def set_pace(factor: float) -> None:
    global _factor
    if factor < 1.0:
        raise ValueError(f"a pace factor slows the edge down: {factor} < 1")
    _factor = float(factor)


def paced(call: Callable[[], T]) -> T:
    """``call()``, lasting at least (the CPU time it used) x factor."""
    if _factor == 1.0:
        return call()
    w0, c0 = time.perf_counter(), time.process_time()
    out = call()
    rest = (time.process_time() - c0) * _factor - (time.perf_counter() - w0)
    if rest > 0:
        time.sleep(rest)
    return out
