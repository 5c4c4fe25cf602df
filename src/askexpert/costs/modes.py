"""Which mode pays: edge only, full offload and collaborative at every point of a bundle's curve, each with its
accuracy, p95 latency and both energy readings (total and near-edge only), and the one to deploy for a
user's goals.

Everything is predicted from parts (:class:`ModeParts`): the generalist's time on the edge device (its device
model), the expert's and the general model's time and energy an image on the server device
(:mod:`askexpert.costs.server_device`), the server software's overhead an offload, the link's time for one
offload's bytes (a constant for a preset, a spread drawn from a recorded trace), the edge's power and radio.
Accuracy comes from the bundle's operating curve on validation (edge only: its point with nothing offloaded;
full offload: the general model on every validation image; collaborative: each point).

**The rule** (:func:`recommend`): the options that meet every goal given (an accuracy floor, a p95 budget, an
energy budget on the reading chosen); of those, the one with the least of what the user minimises (the
chosen energy reading by default, or the p95); ties go to the higher accuracy. No option meets the goals:
none is recommended, and the report names what each mode misses by. NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from askexpert.contract.schema import OperatingCurve
from askexpert.costs.energy import expected_edge_mj
from askexpert.costs.plan import LatencyMix
from askexpert.costs.profiles import DeviceProfile, NetworkProfile
from askexpert.errors import ConfigError

EDGE_ONLY, FULL_OFFLOAD, COLLABORATIVE = "edge only", "full offload", "collaborative"
ENERGY_READINGS = ("total", "near-edge")


@dataclass(frozen=True)
class ModeParts:
    """What the modes are predicted from, on one edge device, server device, link and image form."""

    edge_device: str
    server_device: str
    link: str
    image: str  # how an offloaded image travels, e.g. "raw 28 px" or "jpeg:85 224 px"
    edge_ms: float | None  # the generalist an image on the edge device
    expert_ms: float  # the expert's time an image on the server device (at the server batch)
    expert_mj: float  # its energy an image there
    general_ms: float | None  # the general model's (full offload), None without one
    general_mj: float | None
    overhead_ms: float  # the server software's time an offload beyond compute
    link_ms: tuple[float, ...]  # the link's time for one offload's bytes: one value, or a trace's spread
    up_bytes: int
    down_bytes: int
    edge_power: DeviceProfile | None  # None: edge energy not modelled
    radio: NetworkProfile | None
    notes: tuple[str, ...] = ()

    def edge_mj(self, *, compute_ms: float, rate: float, wait_ms: float) -> float:
        if self.edge_power is None or self.radio is None or self.edge_power.active_w is None:
            return float("nan")
        return expected_edge_mj(self.edge_power, self.radio, edge_ms=compute_ms, rate=rate, wait_ms=wait_ms,
                                moved_bytes=self.up_bytes + self.down_bytes)


@dataclass(frozen=True)
class Option:
    """One way to run: a mode (and for collaboration its tau and k), and what it gives."""

    mode: str
    accuracy: float | None  # on validation (%); None: unknown (a curve without the general model's)
    offload_rate: float  # %
    p95_ms: float
    mean_ms: float
    edge_mj: float
    near_edge_mj: float
    tau: float | None = None
    k: int | None = None

    @property
    def total_mj(self) -> float:
        return self.edge_mj + self.near_edge_mj

    def energy(self, reading: str) -> float:
        return self.total_mj if reading == "total" else self.near_edge_mj

    def label(self) -> str:
        if self.mode != COLLABORATIVE:
            return self.mode
        return f"collaborative (tau {self.tau:.3f}, k {self.k}, {self.offload_rate:.1f}% offloaded)"

    def to_dict(self) -> dict:
        return {**asdict(self), "total_mj": self.total_mj, "label": self.label()}


def _offload_ms(parts: ModeParts, server_ms: float) -> np.ndarray:
    return np.asarray(parts.link_ms, dtype=np.float64) + parts.overhead_ms + server_ms


def options(curve: OperatingCurve, parts: ModeParts) -> list[Option]:
    """Edge only, full offload (where the bundle has a general model) and every curve point."""
    out = []
    edge_ms = parts.edge_ms
    if edge_ms is not None:
        nothing = min(curve.points, key=lambda p: (p.offload_rate, -p.tau))
        out.append(Option(EDGE_ONLY, nothing.accuracy if nothing.offload_rate == 0 else None, 0.0, edge_ms, edge_ms,
                          parts.edge_mj(compute_ms=edge_ms, rate=0.0, wait_ms=0.0), 0.0))
    if parts.general_ms is not None:
        off = _offload_ms(parts, parts.general_ms)
        mix = LatencyMix([0.0], [off], [1.0], 1.0)
        out.append(Option(FULL_OFFLOAD, curve.general_accuracy, 100.0, mix.quantile(0.95), mix.mean,
                          parts.edge_mj(compute_ms=0.0, rate=1.0, wait_ms=float(np.mean(off))),
                          parts.general_mj or 0.0))
    if edge_ms is not None:
        off = _offload_ms(parts, parts.expert_ms)
        for p in curve.points:
            rate = p.offload_rate / 100
            mix = LatencyMix([edge_ms], [off], [1.0], rate)
            out.append(Option(COLLABORATIVE, p.accuracy, p.offload_rate, mix.quantile(0.95), mix.mean,
                              parts.edge_mj(compute_ms=edge_ms, rate=rate, wait_ms=float(np.mean(off))),
                              rate * parts.expert_mj, tau=p.tau, k=p.k))
    return out


def pareto(opts: list[Option], reading: str = "total") -> list[Option]:
    """The options no other beats on accuracy, p95 and the energy reading at once (unknown accuracy: lowest)."""
    def key(o: Option) -> tuple[float, float, float]:
        e = o.energy(reading)
        return (-(o.accuracy if o.accuracy is not None else -math.inf), o.p95_ms, e if not math.isnan(e) else math.inf)

    keys = [key(o) for o in opts]
    front = []
    for i, o in enumerate(opts):
        dominated = any(all(a <= b for a, b in zip(keys[j], keys[i], strict=True)) and keys[j] != keys[i]
                        for j in range(len(opts)))
        if not dominated and keys[i] not in [key(f) for f in front]:
            front.append(o)
    return sorted(front, key=lambda o: (o.p95_ms, -(o.accuracy or 0)))


@dataclass(frozen=True)
class Goals:
    min_accuracy: float | None = None  # %
    p95_ms: float | None = None
    energy_mj: float | None = None
    energy: str = "total"  # total | near-edge: the reading the budget and the minimisation read
    minimise: str = "energy"  # energy | p95

    def __post_init__(self) -> None:
        if self.energy not in ENERGY_READINGS:
            raise ConfigError(f"unknown energy reading {self.energy!r}", fix="use --energy total or --energy near-edge")
        if self.minimise not in ("energy", "p95"):
            raise ConfigError(f"cannot minimise {self.minimise!r}", fix="use --minimise energy or --minimise p95")

    def misses(self, o: Option) -> list[str]:
        """What ``o`` misses of the goals, in words (empty: it meets them all)."""
        out = []
        if self.min_accuracy is not None and (o.accuracy is None or o.accuracy < self.min_accuracy):
            out.append("accuracy unknown" if o.accuracy is None else
                       f"accuracy {o.accuracy:.2f}% < {self.min_accuracy:g}%")
        if self.p95_ms is not None and o.p95_ms > self.p95_ms:
            out.append(f"p95 {o.p95_ms:.1f} ms > {self.p95_ms:g} ms")
        e = o.energy(self.energy)
        if self.energy_mj is not None and (math.isnan(e) or e > self.energy_mj):
            out.append(f"{self.energy} energy unknown" if math.isnan(e) else
                       f"{self.energy} energy {e:.2f} mJ > {self.energy_mj:g} mJ")
        return out

    def cost(self, o: Option) -> float:
        e = o.energy(self.energy)
        return o.p95_ms if self.minimise == "p95" else (e if not math.isnan(e) else math.inf)


@dataclass
class Recommendation:
    goals: Goals
    options: list[Option]
    front: list[Option]
    chosen: Option | None
    best: dict[str, Option | None]  # each mode's option that meets the goals at the least cost (or None)
    reasons: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str | None:
        return self.chosen.mode if self.chosen is not None else None

    def to_dict(self) -> dict:
        return {"goals": asdict(self.goals), "recommended": self.mode,
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "best": {m: (o.to_dict() if o else None) for m, o in self.best.items()},
                "front": [o.to_dict() for o in self.front], "reasons": self.reasons}


def _fmt(o: Option, reading: str) -> str:
    acc = "accuracy unknown" if o.accuracy is None else f"{o.accuracy:.2f}%"
    e = o.energy(reading)
    energy = "energy not modelled" if math.isnan(e) else f"{e:.2f} mJ {reading}"
    return f"{acc}, p95 {o.p95_ms:.1f} ms, {energy}"


def recommend(opts: list[Option], goals: Goals) -> Recommendation:
    """The option to deploy under ``goals`` (:data:`module rule <askexpert.costs.modes>`), with its reasons."""
    front = pareto(opts, goals.energy)
    best: dict[str, Option | None] = {}
    for mode in (EDGE_ONLY, FULL_OFFLOAD, COLLABORATIVE):
        fits = [o for o in opts if o.mode == mode and not goals.misses(o)]
        best[mode] = min(fits, key=lambda o: (goals.cost(o), -(o.accuracy or 0))) if fits else None
    candidates = [o for o in best.values() if o is not None]
    chosen = min(candidates, key=lambda o: (goals.cost(o), -(o.accuracy or 0))) if candidates else None
    reasons = []
    what = "p95 latency" if goals.minimise == "p95" else f"{goals.energy} energy"
    for mode in (EDGE_ONLY, FULL_OFFLOAD, COLLABORATIVE):
        o = best[mode]
        if o is not None:
            reasons.append(f"{mode}: meets the goals at {_fmt(o, goals.energy)}"
                           + (f" ({o.label()})" if mode == COLLABORATIVE else ""))
            continue
        mine = [x for x in opts if x.mode == mode]
        if not mine:
            reasons.append(f"{mode}: not available (" + ("the bundle has no general model" if mode == FULL_OFFLOAD
                                                          else "no edge time") + ")")
            continue
        nearest = min(mine, key=lambda x: (len(goals.misses(x)), goals.cost(x)))
        reasons.append(f"{mode}: misses the goals ({'; '.join(goals.misses(nearest))} at its nearest)")
    if chosen is None:
        reasons.insert(0, "no mode meets the goals: relax one (the nearest misses are below)")
    elif chosen.mode == COLLABORATIVE:
        reasons.insert(0, f"collaborate: the least {what} that meets the goals")
    else:
        reasons.insert(0, f"{chosen.mode}, not collaboration: it meets the goals at the least {what}")
    return Recommendation(goals, opts, front, chosen, best, reasons)
