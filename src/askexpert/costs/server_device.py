"""Near-edge server devices: an expert's time and energy for a batch of ``n`` images on a named accelerator,
from the project's own measurements or a published table, each figure with its source and caveats.

Two kinds (``costs/profiles.yaml``, ``server_devices``):

- **measured** (the H100): rows of a batch curve measured on the device, whole batches of named models
  (:data:`askexpert.costs.references.REFERENCES`, whose graphs' op classes are kept in
  ``reference_graphs.json``). A batch of ``n`` images of a graph with ``M`` million multiply-accumulates and
  ``L`` computing ops takes ``a L + n (b M + c L)`` ms (a launch floor a kernel, then each image's work), and
  costs ``p t + n (e M + f L)`` mJ (the static power over the batch's time, then each image's work); the six
  constants are fitted by non-negative least squares on the relative error of the rows, and every row's fit
  is reported (:meth:`ServerDevice.checks`).
- **published** (the Jetson AGX Orin's GPU): a per-model batch-1 table fitted with the edge's op-class device
  model (:mod:`askexpert.costs.device_model`); without a sourced batch curve a batch of ``n`` costs ``n``
  batch-1 calls, priced at the power profile named (an upper bound each).

**Idle power** is attributed by one rule everywhere: the device's power while it computes a batch (its static
part included) is shared equally by the batch's images; time between batches is not charged to askexpert (a
near-edge accelerator serves many edges and other work). A device dedicated to one edge would add its idle
power times the idle time; no figure here assumes that.

``host`` (no entry) keeps the server's own measured time on this machine and the CPU-core power profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from askexpert.costs.device_model import OP_CLASSES, DeviceModel, GraphFeatures, fit, reference_features
from askexpert.costs.profiles import PROFILE_FILE, _load, device, edge_speed
from askexpert.errors import ConfigError

HOST = "host"
MAC_CLASSES = tuple(c for c in OP_CLASSES if c not in ("elementwise", "layers"))
PRIOR_TABLE = "rpi4"  # the edge table with a transformer that a table without one leans on


def macs(features: GraphFeatures) -> float:
    """Millions of multiply-accumulates one image of the graph does."""
    return float(sum(features.values.get(c, 0.0) for c in MAC_CLASSES))


def _terms(features: GraphFeatures) -> tuple[float, float]:
    return macs(features), float(features.values.get("layers", 0.0))


@dataclass(frozen=True)
class Row:
    """One measured batch: a model, its batch size, its time, and (where measured) its energy an image."""

    model: str
    batch: int
    ms: float
    mj_per_image: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class RowCheck:
    row: Row
    predicted_ms: float | None
    predicted_mj_per_image: float | None


@dataclass(frozen=True)
class ServerDevice:
    """A near-edge accelerator's time and energy for a batch of an expert's images."""

    name: str
    description: str
    kind: str  # measured | published
    source: str
    caveats: tuple[str, ...]
    time_coef: tuple[float, float, float] = (0.0, 0.0, 0.0)  # a, b, c (measured)
    energy_coef: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p, e, f (measured)
    rows: tuple[Row, ...] = ()
    batch1: DeviceModel | None = None  # published
    power_w: float | None = None  # published: the power profile's active power
    power_source: str = ""
    check: str = ""
    fitted_on: tuple[str, ...] = field(default=())

    def batch_ms(self, features: GraphFeatures, n: int) -> float:
        """Milliseconds the device takes for one batch of ``n`` images of the graph."""
        if self.batch1 is not None:
            return n * self.batch1.predict_ms(features)
        m, layers = _terms(features)
        a, b, c = self.time_coef
        return a * layers + n * (b * m + c * layers)

    def batch_mj(self, features: GraphFeatures, n: int) -> float:
        """Millijoules the device spends on that batch (its idle time between batches not charged)."""
        t = self.batch_ms(features, n)
        if self.batch1 is not None:
            return (self.power_w or 0.0) * t
        m, layers = _terms(features)
        p, e, f = self.energy_coef
        return p * t + n * (e * m + f * layers)

    def share_mj(self, features: GraphFeatures, share_ms: float) -> float:
        """One image's energy (mJ) from its share of its batch's time on the device (``batch_ms / n``): the
        same batch model read per image (the static power over the share, then the image's own work)."""
        if self.batch1 is not None:
            return (self.power_w or 0.0) * share_ms
        m, layers = _terms(features)
        p, e, f = self.energy_coef
        return p * share_ms + e * m + f * layers

    def image_ms(self, features: GraphFeatures, n: int = 1) -> float:
        return self.batch_ms(features, n) / n

    def image_mj(self, features: GraphFeatures, n: int = 1) -> float:
        return self.batch_mj(features, n) / n

    def checks(self) -> list[RowCheck]:
        """Every measured row against the fitted model (in sample: three models cannot spare one)."""
        feats = reference_features()
        out = []
        for r in self.rows:
            f = feats[r.model]
            t = None if r.note == "eager" else self.batch_ms(f, r.batch)
            e = None
            if r.mj_per_image is not None:
                m, layers = _terms(f)
                p, ee, ff = self.energy_coef
                e = (p * r.ms + r.batch * (ee * m + ff * layers)) / r.batch
            out.append(RowCheck(r, t, e))
        return out

    def describe(self) -> str:
        return f"{self.name} ({self.description}; {self.kind})"

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "kind": self.kind, "source": self.source,
                "caveats": list(self.caveats), "check": self.check,
                "power_w": self.power_w, "power_source": self.power_source,
                "time_coef_ms": dict(zip(("launch_per_op", "per_image_per_mmac", "per_image_per_op"),
                                         self.time_coef, strict=True)) if self.kind == "measured" else None,
                "energy_coef": dict(zip(("static_w", "mj_per_mmac", "mj_per_op"), self.energy_coef, strict=True))
                if self.kind == "measured" else None,
                "batch1_model": self.batch1.to_dict() if self.batch1 is not None else None}


def server_device_names() -> list[str]:
    return [HOST, *_load().get("server_devices", {})]


def _fit_rows(design: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    from scipy.optimize import nnls

    a = design / target[:, None]
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)
    coef, _ = nnls(a / scale, np.ones(len(target)))
    return tuple(float(v) for v in coef / scale)


def _measured(name: str, entry: dict) -> ServerDevice:
    rows = tuple(Row(**r) for r in entry["measured"])
    feats = reference_features()
    missing = sorted({r.model for r in rows} - set(feats))
    if missing:
        raise ConfigError(f"server device {name}: no graph features for {', '.join(missing)}",
                          fix="run `askexpert testbed check --refresh` on a full install (it writes "
                          "costs/reference_graphs.json)")
    timed = [r for r in rows if r.note != "eager"]
    if len(timed) < 3:
        raise ConfigError(f"server device {name} has {len(timed)} measured batch times; its model needs three",
                          fix=f"add measured rows (model, batch, ms) to server_devices.{name} in {PROFILE_FILE}")
    t_design = np.array([[_terms(feats[r.model])[1], r.batch * _terms(feats[r.model])[0],
                          r.batch * _terms(feats[r.model])[1]] for r in timed])
    time_coef = _fit_rows(t_design, np.array([r.ms for r in timed]))
    powered = [r for r in rows if r.mj_per_image is not None]
    e_design = np.array([[r.ms, r.batch * _terms(feats[r.model])[0], r.batch * _terms(feats[r.model])[1]]
                         for r in powered])
    energy_coef = _fit_rows(e_design, np.array([r.mj_per_image * r.batch for r in powered]))
    return ServerDevice(name, entry["description"], "measured", entry["source"], tuple(entry.get("caveats", ())),
                        time_coef, energy_coef, rows, check=entry.get("check", ""),
                        fitted_on=tuple(sorted({r.model for r in rows})))


def _published(name: str, entry: dict) -> ServerDevice:
    pub = entry.get("published") or {}
    table = {k: float(v) for k, v in (pub.get("ms") or {}).items()}
    if not table or not pub.get("source"):
        raise ConfigError(f"server device {name} has no sourced per-model table",
                          fix=f"add a `published` table with its source to server_devices.{name} in {PROFILE_FILE}")
    prior = edge_speed(PRIOR_TABLE).device_model()
    model = fit(name, reference_features(), table, prior)
    power = device(entry["power"]) if entry.get("power") else None
    if power is None or power.active_w is None:
        raise ConfigError(f"server device {name} has no sourced power",
                          fix=f"name a device profile with an active power as server_devices.{name}.power")
    return ServerDevice(name, entry["description"], "published", pub["source"], tuple(entry.get("caveats", ())),
                        batch1=model, power_w=power.active_w, power_source=power.source,
                        fitted_on=model.fitted_on)


@cache
def server_device(name: str) -> ServerDevice | None:
    """The named server device (None for ``host``: the server's own measured time on this machine), or a
    ConfigError listing the choices."""
    if name == HOST:
        return None
    table = _load().get("server_devices", {})
    if name not in table:
        raise ConfigError(f"no server device {name!r}", fix=f"choose one of: {', '.join(server_device_names())}")
    entry = table[name]
    return _measured(name, entry) if entry["kind"] == "measured" else _published(name, entry)


DEFAULT_SERVER_DEVICE = "h100"  # the best-sourced: askexpert's own measured batch curve
