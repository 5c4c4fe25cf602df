"""The cost model of an operating point: latency and edge energy an image, predicted from measured parts.

Parts (:class:`CostParts`): the generalist's time an image on the edge device, each expert's offload
time on the socket (encoding, the HTTP round trip, the server's queue and compute, at a stated load),
the link's round trip and serialisation, and the device's power. An image is kept with probability
``1 - r`` (it costs the generalist) or offloaded to expert ``e`` with probability ``r * share_e`` (the
generalist, then that expert's offload, then the link): the latency of an image is that mixture
(:class:`LatencyMix`), its p95 the mixture's quantile. The edge's energy is the one formula of
:func:`askexpert.costs.energy.expected_edge_mj` over the expected busy time, waiting time and bytes.

:func:`choose` picks, along a bundle's operating curve, the most accurate point whose prediction
fits a budget (a p95 latency or an edge energy an image), and refuses, naming the nearest budget
that some point fits, when none does. The edge's run-time controllers (:mod:`askexpert.runtime.control`)
use the same mixture over the latencies they observe.

NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from askexpert.contract.schema import CurvePoint, OperatingCurve, Prediction
from askexpert.costs.energy import expected_edge_mj
from askexpert.costs.profiles import DeviceProfile, NetworkProfile
from askexpert.errors import ConfigError

_MAX_EDGE_SAMPLES = 64  # the edge's latency enters the mixture through this many of its quantiles


class LatencyMix:
    """The latency of one image as a weighted set of values: kept (the edge's time alone) with weight
    ``1 - rate``; offloaded to expert ``e`` (the edge's time + that expert's offload + ``link_ms``) with
    weight ``rate * shares[e]``. Offload samples may be ``inf`` (a timeout or a refusal: slow)."""

    def __init__(self, edge_ms: Sequence[float], offload_ms: Sequence[Sequence[float]], shares: Sequence[float],
                 rate: float, link_ms: float = 0.0, offload_weights: Sequence[Sequence[float]] | None = None) -> None:
        """``offload_weights``: each offload sample's weight within its expert (default: equal), e.g. more
        for recent ones."""
        edge = np.sort(np.asarray(edge_ms, dtype=np.float64))
        if not len(edge):
            raise ValueError("no edge latency measured")
        if len(edge) > _MAX_EDGE_SAMPLES:
            edge = np.quantile(edge, (np.arange(_MAX_EDGE_SAMPLES) + 0.5) / _MAX_EDGE_SAMPLES)
        values, weights = [edge], [np.full(len(edge), (1.0 - rate) / len(edge))]
        total = float(sum(shares))
        for e, (samples, share) in enumerate(zip(offload_ms, shares, strict=True)):
            off = np.asarray(samples, dtype=np.float64)
            if share <= 0 or rate <= 0:
                continue
            if not len(off):
                raise ValueError("an expert with a share of the offloads has no measured offload time")
            w = np.ones(len(off)) if offload_weights is None else np.asarray(offload_weights[e], dtype=np.float64)
            pairs = (edge[:, None] + off[None, :] + link_ms).ravel()
            values.append(pairs)
            weights.append((np.full((len(edge), 1), 1.0 / len(edge)) * (w / w.sum())[None, :]).ravel()
                           * rate * share / total)
        v, w = np.concatenate(values), np.concatenate(weights)
        order = np.argsort(v, kind="stable")
        self.values, self.cumulative = v[order], np.cumsum(w[order])
        finite = np.isfinite(v)
        self.mean = float(np.sum(v[finite] * w[finite]) / max(np.sum(w[finite]), 1e-300))

    def quantile(self, q: float) -> float:
        """The smallest latency at or above which a share ``1 - q`` of the images lie."""
        i = int(np.searchsorted(self.cumulative, q * self.cumulative[-1] - 1e-12, side="left"))
        return float(self.values[min(i, len(self.values) - 1)])

    def exceed(self, threshold_ms: float) -> float:
        """The share of images slower than ``threshold_ms``."""
        i = int(np.searchsorted(self.values, threshold_ms, side="right"))
        below = self.cumulative[i - 1] if i else 0.0
        return float(max(0.0, 1.0 - below / self.cumulative[-1]))


def window_breach(exceed, window: int, q: float = 0.95) -> np.ndarray:
    """The chance that a window of ``window`` images has its ``q`` quantile (NumPy's, interpolated) over a
    threshold each image exceeds with probability ``exceed`` (a float or an array of them): at least
    ``window - floor(q (window - 1))`` slow images, a binomial tail."""
    need = window - math.floor(q * (window - 1))
    s = np.arange(need, window + 1, dtype=np.float64)
    log_choose = np.array([math.lgamma(window + 1) - math.lgamma(k + 1) - math.lgamma(window - k + 1) for k in s])
    p = np.clip(np.asarray(exceed, dtype=np.float64), 1e-300, 1 - 1e-16)[..., None]
    tail = np.exp(log_choose + s * np.log(p) + (window - s) * np.log1p(-p)).sum(-1)
    return np.where(np.asarray(exceed) <= 0, 0.0, np.where(np.asarray(exceed) >= 1, 1.0, np.minimum(tail, 1.0)))


@dataclass(frozen=True)
class CostParts:
    """What the cost model is built from, measured on one edge device and link at one server load."""

    device: str
    link: str
    load: int  # competing clients on the server while the offloads were measured
    edge_ms: tuple[float, ...]  # the generalist, batch 1, on the (emulated) device
    offload_ms: tuple[tuple[float, ...], ...]  # per expert (bundle order): encode + socket round trip, no link
    link_ms: float  # the link's round trip and serialisation of one offload
    up_bytes: int
    down_bytes: int
    edge_profile: DeviceProfile | None = None  # the device's power (edge energy); None: latency only
    radio: NetworkProfile | None = None
    measured_at: float | None = None  # the share (%) of images offloaded while the parts were measured
    notes: list[str] = field(default_factory=list)

    def mix(self, point: CurvePoint) -> LatencyMix:
        return LatencyMix(self.edge_ms, self.offload_ms, point.expert_share or [1.0] * len(self.offload_ms),
                          point.offload_rate / 100, self.link_ms)

    def edge_mj(self, point: CurvePoint) -> float:
        """The edge's energy an image (mJ) at ``point``: the generalist's compute, the wait of an offload
        at the idle power, the radio for its bytes."""
        if self.edge_profile is None or self.radio is None:
            raise ConfigError("an energy budget needs the edge device's power and radio",
                              fix="name an edge device with an energy profile (--edge-device rpi4)")
        shares = point.expert_share or [1.0] * len(self.offload_ms)
        wait = sum(s * float(np.median(o)) for s, o in zip(shares, self.offload_ms, strict=True) if s > 0)
        return expected_edge_mj(self.edge_profile, self.radio, edge_ms=float(np.mean(self.edge_ms)),
                                rate=point.offload_rate / 100, wait_ms=wait + self.link_ms,
                                moved_bytes=self.up_bytes + self.down_bytes)

    def predict(self, point: CurvePoint) -> Prediction:
        mix = self.mix(point)
        offload = float(np.median(np.concatenate([np.asarray(o, dtype=np.float64) for o in self.offload_ms])))
        energy = self.edge_mj(point) if self.edge_profile is not None and self.radio is not None else float("nan")
        return Prediction(device=self.device, link=self.link, load=self.load, p95_ms=mix.quantile(0.95),
                          mean_ms=mix.mean, edge_mj=energy, edge_ms=float(np.median(self.edge_ms)),
                          offload_ms=offload, link_ms=self.link_ms)


@dataclass(frozen=True)
class Choice:
    point: CurvePoint
    prediction: Prediction
    considered: int  # curve points evaluated
    feasible: int  # of them within the budget


def choose(curve: OperatingCurve, parts: CostParts, *, p95_ms: float | None = None, edge_mj: float | None = None,
           k: int | None = None) -> Choice:
    """The most accurate point of ``curve`` (of ``k``, or of every k it offers) whose predicted p95 latency
    is at most ``p95_ms`` or whose predicted edge energy is at most ``edge_mj`` (ties: the least offload).
    When no point fits, a :class:`ConfigError` names the nearest budget that one does."""
    if (p95_ms is None) == (edge_mj is None):
        raise ConfigError("choose from one budget", fix="pass one of --p95-latency or --edge-energy")
    points = [p for p in curve.points if k is None or p.k == k]
    if not points:
        raise ConfigError(f"the bundle's operating curve has no point with k {k}",
                          fix=f"choose k among {curve.ks}")
    preds = [parts.predict(p) for p in points]
    value = [x.p95_ms if p95_ms is not None else x.edge_mj for x in preds]
    budget = p95_ms if p95_ms is not None else edge_mj
    fits = [i for i, v in enumerate(value) if v <= budget]
    if not fits:
        best = int(np.argmin(value))
        what, unit, flag = (("p95 latency", "ms", "--p95-latency") if p95_ms is not None
                            else ("edge energy", "mJ", "--edge-energy"))
        raise ConfigError(
            f"no operating point fits a {what} of {budget:g} {unit} on {parts.device} over {parts.link}: the least "
            f"any point needs is {value[best]:.1f} {unit} (tau {points[best].tau:.4f}, k {points[best].k}, "
            f"{points[best].offload_rate:.1f}% offloaded; the generalist alone takes {preds[best].edge_ms:.1f} ms "
            "an image there)",
            fix=f"raise {flag} to at least {math.ceil(value[best] * 10) / 10:g}, or choose a faster edge device")
    i = max(fits, key=lambda j: (points[j].accuracy, -points[j].offload_rate))
    return Choice(points[i], preds[i], len(points), len(fits))
