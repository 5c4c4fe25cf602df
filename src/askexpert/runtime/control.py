"""Holding an operating point at run time: tau moved along the bundle's operating curve as the link, the
server's load and the inputs change.

Two kinds of controller, both fed every answered image (:meth:`observe`) and read before every batch
(``tau``):

* :class:`BudgetController` keeps a budget: a p95 latency (``--slo-p95``) or an edge energy an image
  (``--energy-budget``). It keeps what it sees in windows (the generalist's time over the last images,
  the last offloads' time: encoding, the socket's round trip, the link, the server's queue and compute;
  an offload that failed, a timeout or a 503 with Retry-After, counts as infinitely slow) and predicts,
  for every point of the curve, what the next window would see there (:class:`askexpert.costs.plan.
  LatencyMix`, the build-time cost model's mixture): for a latency SLO, the chance that a window's p95
  breaks it (:func:`askexpert.costs.plan.window_breach`); for energy, the edge's mean millijoules. It
  moves down the curve (fewer offloads) when its point breaks the budget, and up to the most accurate
  point that keeps a margin (the hysteresis: a point must be well inside the budget to be climbed to,
  and only breaking it makes the controller leave), at most ``max_step`` points a move, and not before
  ``cooldown`` images and seconds have passed since the last one.
* :class:`OffloadTracker` keeps the realised offload share at a target without labels: tau follows the
  target quantile of the calibrated confidence over a sliding window, so as the inputs drift (noise,
  lighting, a new camera) the same share of them is offloaded.

Every change is kept (:class:`TauChange`: when, at which image, to what, and why), every image's trace
records the tau in force and why it last changed, and :func:`control_report` sums up a run: tau's path,
the windows within the budget, the realised offload per window.

NumPy only; the clock is injectable (the tests drive it).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from askexpert.contract.schema import CurvePoint
from askexpert.costs.energy import expected_edge_mj
from askexpert.costs.plan import LatencyMix, window_breach
from askexpert.costs.profiles import DeviceProfile, NetworkProfile
from askexpert.errors import ConfigError
from askexpert.routing.thresholds import tau_for_offload

Clock = Callable[[], float]
WINDOW = 100  # images a window (the controllers' target and the report's unit)


@dataclass(frozen=True)
class Observation:
    """What one answered image tells a controller."""

    edge_ms: float  # the generalist's time (its batch's)
    confidence: float  # the generalist's calibrated confidence
    offload_ms: float | None = None  # the offload's whole time, None when kept (inf: it failed)
    moved_bytes: float = 0.0

    @classmethod
    def of(cls, trace) -> Observation:
        """From a :class:`~askexpert.runtime.edge.SampleTrace`."""
        offload = None
        if trace.route.offloaded and not trace.expert_on_edge:
            offload = math.inf if trace.degraded else (trace.encode_ms + trace.network_ms + trace.link_ms
                                                       + trace.queue_ms + trace.expert_ms)
        return cls(trace.edge_ms, trace.confidence, offload, trace.up_bytes + trace.down_bytes)


@dataclass(frozen=True)
class TauChange:
    image: int  # the first image answered at this tau
    t: float  # the controller's clock (s since it started)
    tau: float
    val_offload_rate: float | None  # the curve point's validation offload (%), None off the curve
    why: str


class Controller(Protocol):
    tau: float
    why: str
    changes: list[TauChange]

    def observe(self, o: Observation) -> None: ...


class BudgetController:
    """Moves tau along ``points`` (one k's curve, by rising offload) to keep a p95 latency SLO
    (``slo_p95_ms``) or an edge energy budget (``energy_mj``, with the device's ``edge`` and ``radio``
    profiles)."""

    def __init__(self, points: list[CurvePoint], start_tau: float, *, slo_p95_ms: float | None = None,
                 energy_mj: float | None = None, edge: DeviceProfile | None = None,
                 radio: NetworkProfile | None = None, window: int = WINDOW, edge_window: int = 200,
                 offload_window: int = 10, recency: float = 0.75, breach: float = 0.01, hysteresis: float = 0.5,
                 max_step: float = 15.0, cooldown_down: int = 3, cooldown_up: int = 25, cooldown_s: float = 0.0,
                 every: int = 10, min_offload: float = 1.0,
                 clock: Clock = time.monotonic) -> None:
        if (slo_p95_ms is None) == (energy_mj is None):
            raise ConfigError("a budget controller keeps one budget", fix="pass one of --slo-p95 or --energy-budget")
        if energy_mj is not None and (edge is None or radio is None):
            raise ConfigError("--energy-budget needs the edge device's power and radio profiles",
                              fix="pass --edge-profile (e.g. raspberry-pi-4) and --radio (wifi or cellular)")
        for name, value in (("--slo-p95", slo_p95_ms), ("--energy-budget", energy_mj)):
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}", fix=f"give {name} a positive budget")
        if not points:
            raise ConfigError("the bundle has no operating curve to move along (a schema-1 bundle)",
                              fix="build the bundle again with this askexpert (build-system writes the curve)")
        # the lowest point still offloads a little: the controller keeps seeing what an offload costs
        usable = [p for p in points if p.offload_rate >= min_offload] or points[-1:]
        self.points = usable
        self.slo, self.energy, self.edge, self.radio = slo_p95_ms, energy_mj, edge, radio
        self.window, self.breach, self.hysteresis, self.max_step = window, breach, hysteresis, max_step
        self.cooldown_down, self.cooldown_up, self.cooldown_s = cooldown_down, cooldown_up, cooldown_s
        self.every, self.clock, self.recency = every, clock, recency
        self.edge_ms: deque[float] = deque(maxlen=edge_window)
        self.offload_ms: deque[float] = deque(maxlen=offload_window)
        self.moved: deque[float] = deque(maxlen=offload_window)
        self.index = int(np.argmin([abs(p.tau - start_tau) for p in usable]))
        self.t0 = clock()
        self.images = 0
        self._last_move = (0, self.t0)
        self.why = f"start: the bundle's operating point (tau {start_tau:.4f})"
        self.changes = [TauChange(0, 0.0, self.tau, self.point.offload_rate, self.why)]

    @property
    def point(self) -> CurvePoint:
        return self.points[self.index]

    @property
    def tau(self) -> float:
        return self.point.tau

    @property
    def budget_text(self) -> str:
        return f"SLO p95 {self.slo:g} ms" if self.slo is not None else f"edge energy {self.energy:g} mJ an image"

    def scores(self) -> np.ndarray:
        """The budget's measure at every point over what the windows hold: the chance that a window's
        p95 breaks the SLO (an image at offload share r is slow with probability (1 - r) P(edge > SLO) +
        r P(edge + offload > SLO): the cost model's mixture), or the edge's mean energy an image (mJ)."""
        r = np.array([p.offload_rate / 100 for p in self.points])
        if self.slo is not None:
            # the newest offload weighs most (``recency`` a step back): a link that just got slow shows at once
            w = [self.recency ** (len(self.offload_ms) - 1 - i) for i in range(len(self.offload_ms))]
            kept = LatencyMix(self.edge_ms, [self.offload_ms], [1.0], 0.0).exceed(self.slo)
            sent = LatencyMix(self.edge_ms, [self.offload_ms], [1.0], 1.0, offload_weights=[w]).exceed(self.slo)
            return window_breach((1 - r) * kept + r * sent, self.window)
        finite = [v for v in self.offload_ms if math.isfinite(v)]
        wait = float(np.median(finite)) if finite else 0.0
        moved = float(np.mean(self.moved)) if self.moved else 0.0
        edge_ms = float(np.mean(self.edge_ms))
        return np.array([expected_edge_mj(self.edge, self.radio, edge_ms=edge_ms, rate=x, wait_ms=wait,
                                          moved_bytes=moved) for x in r])

    @property
    def limits(self) -> tuple[float, float]:
        """(the budget a point must keep, the tighter one a point must keep to be climbed to)"""
        if self.slo is not None:
            return self.breach, self.breach * self.hysteresis
        return self.energy, self.energy * (1 - 0.1 * self.hysteresis)

    def observe(self, o: Observation) -> None:
        self.images += 1
        self.edge_ms.append(o.edge_ms)
        if o.offload_ms is not None:
            self.offload_ms.append(o.offload_ms)
            self.moved.append(o.moved_bytes)
        self._decide(news=o.offload_ms is not None)

    def _step(self, i: int, target: int) -> int:
        """From point ``i`` toward ``target``, by at most ``max_step`` points of validation offload."""
        rate = self.points[i].offload_rate
        reach = [j for j in (range(target, i) if target < i else range(i + 1, target + 1))
                 if abs(self.points[j].offload_rate - rate) <= self.max_step]
        if not reach:
            return target  # the next point alone is further: take it
        return min(reach) if target < i else max(reach)

    def _decide(self, news: bool) -> None:
        now = self.clock()
        since = self.images - self._last_move[0]
        if since < self.cooldown_down or now - self._last_move[1] < self.cooldown_s:
            return  # not right after a move
        if not news and since % self.every:
            return  # an offload is news; otherwise every few images (a decision costs a few hundred microseconds)
        if len(self.edge_ms) < 10 or len(self.offload_ms) < 3:
            return  # too little seen to predict anything
        keep, climb = self.limits
        scores = self.scores()
        i = self.index
        if scores[i] > keep:
            inside = [j for j in range(i) if scores[j] <= keep]
            new = self._step(i, max(inside) if inside else 0)
            if new == i:
                return  # already at the lowest point
            why = "down"
        else:
            better = [j for j in range(len(self.points)) if scores[j] <= climb
                      and self.points[j].accuracy > self.points[i].accuracy]
            if not better or since < self.cooldown_up:
                return
            new = self._step(i, max(better, key=lambda j: (self.points[j].accuracy, -j)))
            why = "up" if new > i else "down"
        finite = [v for v in self.offload_ms if math.isfinite(v)]
        seen = (f"offloads p50 {np.median(finite):.1f} ms" if finite else "no offload answered") + (
            f", {len(self.offload_ms) - len(finite)} of the last {len(self.offload_ms)} failed"
            if len(finite) < len(self.offload_ms) else "") + f"; generalist p50 {np.median(self.edge_ms):.1f} ms"
        measure = (lambda v: f"P(window p95 > SLO) {v:.1%}") if self.slo is not None else (lambda v: f"{v:.1f} mJ")
        self.why = (f"{why}: {self.budget_text}; {seen}; at {self.points[i].offload_rate:.1f}% offload "
                    f"{measure(scores[i])}, at {self.points[new].offload_rate:.1f}% {measure(scores[new])}")
        self.index = new
        self._last_move = (self.images, now)
        self.changes.append(TauChange(self.images, now - self.t0, self.tau, self.point.offload_rate, self.why))


class OffloadTracker:
    """Keeps the realised offload share at ``target`` (0..1) without labels: tau is the ``target`` quantile
    of the calibrated confidence of the last ``window`` images, recomputed every ``every`` images once
    ``min_samples`` are in."""

    def __init__(self, target: float, start_tau: float, *, window: int = 500, every: int = 20,
                 min_samples: int = 100, clock: Clock = time.monotonic) -> None:
        if not 0.0 <= target <= 1.0:
            raise ConfigError(f"--target-offload is a share in 0..1, got {target}", fix="e.g. --target-offload 0.3")
        self.target, self.every, self.min_samples, self.clock = target, every, min_samples, clock
        self.conf: deque[float] = deque(maxlen=window)
        self.tau = float(start_tau)
        self.t0 = clock()
        self.images = 0
        self.why = f"start: the bundle's operating point (tau {start_tau:.4f})"
        self.changes = [TauChange(0, 0.0, self.tau, None, self.why)]

    def observe(self, o: Observation) -> None:
        self.images += 1
        self.conf.append(o.confidence)
        if self.images % self.every or len(self.conf) < self.min_samples:
            return
        conf = np.asarray(self.conf)  # tau_for_offload reads it in float32, as before
        tau = tau_for_offload(conf, self.target)
        if tau == self.tau:
            return
        before = float(np.mean(conf < self.tau)) * 100
        self.why = (f"tracking {self.target:.1%} offload: the last {len(self.conf)} images' confidences would "
                    f"offload {before:.1f}% at tau {self.tau:.4f}")
        self.tau = tau
        self.changes.append(TauChange(self.images, self.clock() - self.t0, tau, None, self.why))


@dataclass
class ControlReport:
    """What holding the operating point did over a run."""

    mode: str  # slo-p95 | energy-budget | target-offload
    target: float
    window: int  # images a window
    windows: int
    windows_within: int  # windows whose p95 (or energy, or offload share) kept the target
    share_within: float  # %
    offload_by_window: list[float] = field(default_factory=list)  # realised offload (%)
    p95_by_window: list[float] = field(default_factory=list)  # ms
    changes: list[TauChange] = field(default_factory=list)
    tau_min: float = math.nan
    tau_max: float = math.nan


def control_report(mode: str, target: float, changes: list[TauChange], traces, *, window: int = WINDOW,
                   energy_mj: Callable[[list], float] | None = None, tolerance_points: float = 3.0) -> ControlReport:
    """Windows of ``window`` answered images (the last partial one left out): their p95 latency and
    realised offload, and how many kept the target (a p95 within the SLO; an edge energy within the
    budget, by ``energy_mj`` of the window's traces; an offload within ``tolerance_points`` of it)."""
    timed = [t for t in traces if math.isfinite(t.total_ms)]
    chunks = [timed[i:i + window] for i in range(0, len(timed) - window + 1, window)]
    p95 = [float(np.percentile([t.total_ms for t in c], 95)) for c in chunks]
    off = [100 * sum(t.route.offloaded for t in c) / len(c) for c in chunks]
    if mode == "slo-p95":
        within = [v <= target for v in p95]
    elif mode == "energy-budget":
        within = [energy_mj(c) <= target for c in chunks] if energy_mj else []
    else:
        within = [abs(v - 100 * target) <= tolerance_points for v in off]
    taus = [c.tau for c in changes] or [math.nan]
    return ControlReport(mode, target, window, len(chunks), sum(within),
                         100 * sum(within) / len(within) if within else math.nan, off, p95, list(changes),
                         float(min(taus)), float(max(taus)))
