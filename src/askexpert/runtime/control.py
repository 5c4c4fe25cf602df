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
from askexpert.routing.thresholds import ALL, tau_for_offload

Clock = Callable[[], float]
WINDOW = 100  # images a window (the controllers' target and the report's unit)


@dataclass(frozen=True)
class Observation:
    """What one answered image tells a controller."""

    edge_ms: float  # the generalist's time (its batch's)
    confidence: float  # the generalist's calibrated confidence
    offload_ms: float | None = None  # the offload's whole time, None when kept (inf: it failed)
    moved_bytes: float = 0.0
    top_prob: float = math.nan  # the generalist's calibrated probability of its answer
    backs: float | None = None  # the expert's probability that the generalist's answer is right (None: unknown)

    @classmethod
    def of(cls, trace) -> Observation:
        """From a :class:`~askexpert.runtime.edge.SampleTrace`."""
        offload = None
        if trace.route.offloaded and not trace.expert_on_edge:
            offload = math.inf if trace.degraded else (trace.encode_ms + trace.network_ms + trace.link_ms
                                                       + trace.queue_ms + trace.expert_ms)
        top = math.nan if trace.top_prob is None else trace.top_prob
        return cls(trace.edge_ms, trace.confidence, offload, trace.up_bytes + trace.down_bytes, top,
                   trace.expert_backs)


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


@dataclass(frozen=True)
class Tuning:
    """How a :class:`BudgetController` watches and moves: the windows it judges on, how cautious a move is."""

    window: int = WINDOW  # the images a p95 window holds (the SLO's breach chance is over these)
    edge_window: int = 200  # the last generalist times kept
    offload_window: int = 10  # the last offloads' times kept (weighted by recency)
    recency: float = 0.75  # each older offload's weight, relative to the next
    breach: float = 0.01  # the window-breach chance an SLO tolerates
    hysteresis: float = 0.5  # how far under the budget a climb back must stay (a share of the margin)
    max_step: float = 15.0  # the most offload (points of %) one move changes
    cooldown_down: int = 3  # images after a move before the next move down
    cooldown_up: int = 25  # ... before a move up
    cooldown_s: float = 0.0  # seconds after a move before the next
    every: int = 10  # images between two looks when nothing new arrived
    min_offload: float = 1.0  # the lowest point kept still offloads this much (%): costs stay seen


class BudgetController:
    """Moves tau along ``points`` (one k's curve, by rising offload) to keep a p95 latency SLO
    (``slo_p95_ms``) or an edge energy budget (``energy_mj``, with the device's ``edge`` and ``radio``
    profiles), as ``tuning`` says."""

    def __init__(self, points: list[CurvePoint], start_tau: float, *, slo_p95_ms: float | None = None,
                 energy_mj: float | None = None, edge: DeviceProfile | None = None,
                 radio: NetworkProfile | None = None, tuning: Tuning = Tuning(),
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
        t = tuning
        usable = [p for p in points if p.offload_rate >= t.min_offload] or points[-1:]
        self.points = usable
        self.slo, self.energy, self.edge, self.radio = slo_p95_ms, energy_mj, edge, radio
        self.window, self.breach, self.hysteresis, self.max_step = t.window, t.breach, t.hysteresis, t.max_step
        self.cooldown_down, self.cooldown_up, self.cooldown_s = t.cooldown_down, t.cooldown_up, t.cooldown_s
        self.every, self.clock, self.recency = t.every, clock, t.recency
        self.edge_ms: deque[float] = deque(maxlen=t.edge_window)
        self.offload_ms: deque[float] = deque(maxlen=t.offload_window)
        self.moved: deque[float] = deque(maxlen=t.offload_window)
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
        # energy is a mean: the mean wait, not the median (a recorded link's queue puts its cost in the tail)
        wait = float(np.mean(finite)) if finite else 0.0
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


def uniform_draws(seed: int, first: int, n: int) -> np.ndarray:
    """``n`` uniform numbers in [0, 1) for the images ``first .. first + n - 1`` of a stream: a function of
    (seed, image) alone (splitmix64), so a batch size, a restart or a resumed run draws the same ones."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed) << np.uint64(32)) ^ np.arange(first, first + n, dtype=np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def fit_backing(top_prob, backs, prior: float = 1.0, steps: int = 25) -> tuple[float, float]:
    """(a, b) of E[the experts' probability for the generalist's answer] = sigmoid(a + b logit(top_prob)),
    fitted by maximum likelihood on soft labels (cross-entropy, Newton's method) with a Gaussian prior of
    ``prior`` pseudo-images pulling it to (0, 1), the generalist's own calibration: with few answers it
    trusts that, with many it follows them; an infinite prior keeps it (the answers are not read)."""
    if math.isinf(prior) or len(backs) == 0:
        return 0.0, 1.0
    x = _logit(top_prob)
    y = np.asarray(backs, dtype=np.float64)
    theta = np.array([0.0, 1.0])
    for _ in range(steps):
        q = 1 / (1 + np.exp(-(theta[0] + theta[1] * x)))
        r = q * (1 - q)
        grad = np.array([np.sum(q - y), np.sum((q - y) * x)]) + prior * (theta - [0.0, 1.0])
        hess = np.array([[r.sum(), (r * x).sum()], [(r * x).sum(), (r * x * x).sum()]]) + prior * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-8:
            break
    return float(theta[0]), float(theta[1])


class AccuracyKeeper:
    """Holds the accuracy of the answers the edge keeps at ``target`` (0..1), from the experts' answers.

    Every offload an expert answers gives its probability that the generalist's answer is right (a free,
    noisy soft label: :attr:`askexpert.runtime.edge.SampleTrace.expert_backs`); a random ``probe`` share of
    the images the rule keeps is offloaded too (drawn by :func:`uniform_draws`, counted in the offload
    rate), so the answers also cover the confident images the edge keeps. From the answers of the last
    ``memory`` images it fits what the experts say of the generalist's answers at each calibrated
    confidence (:func:`fit_backing`; the images answered were chosen by their confidence alone, so the fit
    needs no weights: the probes reach the confidences the rule never offloads), and estimates the accuracy
    the edge would keep at any tau as the mean fitted backing of the last ``window`` images above it.
    Every ``every`` images tau moves to the one that keeps the most images while that estimate holds the
    target; a ``budget`` controller (--slo-p95 or --energy-budget) caps it: the budget wins.

    The estimate is as good as the experts' probabilities: where they are overconfident (drifted inputs
    they were not trained on), so is it (the benchmark measures it against the true accuracy)."""

    def __init__(self, target: float, start_tau: float, *, probe: float = 0.05, seed: int = 0, window: int = 500,
                 memory: int = 1000, every: int = 20, min_images: int = 100, min_answers: int = 20,
                 prior: float = 1000.0, budget: BudgetController | None = None, clock: Clock = time.monotonic) -> None:
        if not 0.0 < target < 1.0:
            raise ConfigError(f"--target-accuracy is a share in 0..1 (the accuracy of the answers the edge keeps), "
                              f"got {target}", fix="e.g. --target-accuracy 0.9")
        if not 0.0 <= probe < 1.0:
            raise ConfigError(f"--probe is a share in [0, 1) of the kept images offloaded to check them, got {probe}",
                              fix="e.g. --probe 0.05")
        self.target, self.probe, self.seed, self.every, self.memory = target, probe, seed, every, memory
        self.min_images, self.min_answers, self.prior, self.budget, self.clock = (
            min_images, min_answers, prior, budget, clock)
        self.scores: deque[float] = deque(maxlen=window)
        self.tops: deque[float] = deque(maxlen=window)
        self.answers: deque[tuple[int, float, float]] = deque()  # (image, top prob, the expert's backing)
        self.tau = float(start_tau)
        self.fit = (0.0, 1.0)
        self.fits: list[tuple[int, tuple[float, float]]] = [(0, self.fit)]  # (from image, fit): each refit
        self.t0 = clock()
        self.images = 0
        self.why = f"start: the bundle's operating point (tau {start_tau:.4f})"
        self.changes = [TauChange(0, 0.0, self.tau, None, self.why)]

    def probes(self, first: int, kept: np.ndarray) -> np.ndarray:
        """Which of a batch's kept images (images ``first`` on) go to their expert anyway."""
        return np.asarray(kept, dtype=bool) & (uniform_draws(self.seed, first, len(kept)) < self.probe)

    def backing(self, top_prob, fit: tuple[float, float] | None = None) -> np.ndarray:
        """The fitted probability the experts give answers of these calibrated confidences."""
        a, b = self.fit if fit is None else fit
        return 1 / (1 + np.exp(-(a + b * _logit(top_prob))))

    def estimate(self, top_prob, fit: tuple[float, float] | None = None) -> float:
        """The estimated accuracy of answers of these calibrated confidences, were they all kept."""
        return float(np.mean(self.backing(top_prob, fit)))

    def fit_at(self, image: int) -> tuple[float, float]:
        """The fit in force when the controller's ``image``-th image was answered."""
        return next(fit for first, fit in reversed(self.fits) if first <= image)

    def observe(self, o: Observation) -> None:
        self.images += 1
        if self.budget is not None:
            self.budget.observe(o)
        self.scores.append(o.confidence)
        self.tops.append(o.top_prob)
        if o.backs is not None and math.isfinite(o.top_prob):
            self.answers.append((self.images, o.top_prob, o.backs))
        while self.answers and self.answers[0][0] <= self.images - self.memory:
            self.answers.popleft()
        if self.images % self.every or len(self.scores) < self.min_images or len(self.answers) < self.min_answers:
            return
        _, top, backs = zip(*self.answers, strict=True)
        self.fit = fit_backing(top, backs, self.prior)
        self.fits.append((self.images, self.fit))
        self._move()

    def _move(self) -> None:
        order = np.argsort(-np.asarray(self.scores), kind="stable")
        scores = np.asarray(self.scores)[order]
        kept = np.cumsum(self.backing(np.asarray(self.tops)[order])) / np.arange(1, len(order) + 1)
        holds = np.flatnonzero(kept >= self.target)
        m = int(holds[-1]) + 1 if holds.size else 0  # the most images kept with the estimate at the target
        tau = ALL if m == 0 else float(np.nextafter(scores[m - 1], -np.inf)) if m == len(scores) else float(
            scores[m - 1])
        estimate = float(kept[m - 1]) if m else float(kept[0])
        why = (f"holding {self.target:.1%} kept accuracy: at tau {tau:.4f} the last {len(scores)} images would "
               f"keep {m} at an estimated {estimate:.1%} ({len(self.answers)} expert answers)")
        if self.budget is not None and self.budget.tau < tau:
            tau, why = self.budget.tau, f"{why}; capped by the {self.budget.budget_text} at tau {self.budget.tau:.4f}"
        if tau == self.tau:
            return
        self.tau, self.why = tau, why
        self.changes.append(TauChange(self.images, self.clock() - self.t0, tau, None, why))

    def kept_estimate(self, traces, image: int) -> float:
        """The estimated accuracy of the answers kept among ``traces`` (a window whose last image was the
        controller's ``image``-th), by the fit in force then: what the edge believed, to be set against the
        true accuracy where labels exist."""
        kept = [t.top_prob for t in traces if not t.route.offloaded and t.top_prob is not None]
        return self.estimate(kept, self.fit_at(image)) if kept else math.nan


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
    # --target-accuracy: per window, the accuracy of the kept answers as the edge estimated it and as it was
    # (None without labels), in %
    estimate_by_window: list[float] = field(default_factory=list)
    kept_accuracy_by_window: list[float | None] = field(default_factory=list)


ACCURACY_WINDOW = 500  # images a window of a --target-accuracy report


def control_report(mode: str, target: float, changes: list[TauChange], traces, *, window: int = WINDOW,
                   energy_mj: Callable[[list], float] | None = None, tolerance_points: float = 3.0,
                   kept_estimate: Callable[[list, int], float] | None = None) -> ControlReport:
    """Windows of ``window`` answered images (the last partial one left out): their p95 latency and
    realised offload, and how many kept the target (a p95 within the SLO; an edge energy within the
    budget, by ``energy_mj`` of the window's traces; an offload within ``tolerance_points`` of it; a kept
    accuracy, true where labels exist and else as estimated, no more than 2 points under it).
    ``kept_estimate(chunk, images)``: the edge's estimate of a window's kept accuracy once it had answered
    ``images`` images (mode target-accuracy)."""
    timed = [t for t in traces if math.isfinite(t.total_ms)]
    chunks = [timed[i:i + window] for i in range(0, len(timed) - window + 1, window)]
    p95 = [float(np.percentile([t.total_ms for t in c], 95)) for c in chunks]
    off = [100 * sum(t.route.offloaded for t in c) / len(c) for c in chunks]
    estimates: list[float] = []
    true: list[float | None] = []
    if mode == "slo-p95":
        within = [v <= target for v in p95]
    elif mode == "energy-budget":
        within = [energy_mj(c) <= target for c in chunks] if energy_mj else []
    elif mode == "target-accuracy":
        for j, c in enumerate(chunks):
            estimates.append(100 * kept_estimate(c, (j + 1) * window) if kept_estimate else math.nan)
            kept = [t.pred == t.label for t in c if not t.route.offloaded and t.label is not None]
            true.append(100 * float(np.mean(kept)) if kept else None)
        within = [(t if t is not None else e) >= 100 * target - 2.0 for t, e in zip(true, estimates, strict=True)]
    else:
        within = [abs(v - 100 * target) <= tolerance_points for v in off]
    taus = [c.tau for c in changes] or [math.nan]
    return ControlReport(mode, target, window, len(chunks), sum(within),
                         100 * sum(within) / len(within) if within else math.nan, off, p95, list(changes),
                         float(min(taus)), float(max(taus)), estimates, true)
