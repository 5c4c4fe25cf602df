"""Device and network profiles (``profiles.yaml``) for modelled energy, each figure with its source."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from askexpert.errors import ConfigError

PROFILE_FILE = Path(__file__).with_name("profiles.yaml")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    role: str
    description: str
    idle_w: float | None
    active_w: float | None
    source: str

    def energy_j(self, busy_s: float) -> float:
        """Energy of ``busy_s`` seconds of compute at the active power (what the work costs)."""
        if self.active_w is None:
            raise ConfigError(f"device profile {self.name} has no sourced active power",
                              fix=f"choose another profile ({', '.join(device_names())}) or add the figure, "
                              f"with its source, to {PROFILE_FILE}")
        return self.active_w * busy_s


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    description: str
    joules_per_bit: float
    source: str

    def energy_j(self, n_bytes: int) -> float:
        return self.joules_per_bit * 8 * n_bytes


@cache
def _load() -> dict:
    return yaml.safe_load(PROFILE_FILE.read_text())


def device_names() -> list[str]:
    return list(_load()["devices"])


def network_names() -> list[str]:
    return list(_load()["networks"])


def _entry(section: str, name: str, what: str, also: tuple[str, ...] = ()) -> dict:
    """``name``'s fields in ``section`` of profiles.yaml, or an error listing the choices (``also`` first)."""
    table = _load()[section]
    if name not in table:
        raise ConfigError(f"no {what} {name!r}", fix=f"choose one of: {', '.join((*also, *table))}")
    return {"name": name, **table[name]}


CPU_SERVER, GPU_SERVER = "epyc-9654-core", "h100-batch1"


def server_profile_for(on_gpu: bool) -> str:
    """The default profile of the near-edge server's power: the H100's where the experts run on a GPU,
    one server CPU core's where they run on a CPU (as on a machine without an accelerator)."""
    return GPU_SERVER if on_gpu else CPU_SERVER


def radio_for(link_name: str | None) -> str:
    """The radio a link's bytes are priced at: wifi's for wifi, ethernet and no link; cellular's for the
    others (lte, 5g, a recorded cellular trace, a link spelled out)."""
    return "wifi" if link_name is None or link_name in ("wifi", "ethernet") else "cellular"


@dataclass(frozen=True)
class ServerOverhead:
    """The server software's time an offload beyond the model's compute (HTTP, parsing, batching, answer)."""

    ms: float
    source: str

    def describe(self) -> str:
        return f"{self.ms:g} ms an offload ({self.source})"


def server_overhead() -> ServerOverhead:
    entry = _load()["server_software"]
    return ServerOverhead(float(entry["overhead_ms"]), entry["source"])


def device(name: str) -> DeviceProfile:
    return DeviceProfile(**_entry("devices", name, "device profile"))


def network(name: str) -> NetworkProfile:
    return NetworkProfile(**_entry("networks", name, "network profile"))


@dataclass(frozen=True)
class SpeedProfile:
    """How fast an edge device runs a reference model: a published figure, with its source."""

    name: str
    description: str
    reference: str  # the reference model (askexpert.costs.references.REFERENCES)
    reference_ms: float | None  # its published batch-1 latency on the device
    threads: int
    source: str | None
    energy_profile: str | None = None
    transformer: bool = False  # the published table holds a transformer
    published: dict | None = None  # {runtime, threads, source, ms: {model: ms}}: the device model's data
    scalar: dict | None = None  # {benchmark, events_per_s, source}: scalar code's speed on the device

    @property
    def published_ms(self) -> dict[str, float]:
        return {k: float(v) for k, v in ((self.published or {}).get("ms") or {}).items()}

    def device_model(self):
        """The device model fitted to the published table (:mod:`askexpert.costs.device_model`), or a
        ConfigError naming the fix where the profile has none."""
        from askexpert.costs.device_model import fit, reference_features

        if not self.published_ms or not (self.published or {}).get("source"):
            raise ConfigError(f"edge device {self.name} has no published per-model figures, so no device model",
                              fix=f"add a sourced `published` table to {self.name} in {PROFILE_FILE}, or use "
                              "--edge-mode kernel / paced (one reference model's ratio)")
        return fit(self.name, reference_features(), self.published_ms, self.prior_model())

    def prior_model(self):
        """For a table without a transformer: the device model of the first profile whose table has one
        (its op-class proportions, scaled to this device, are the prior); None otherwise."""
        if self.transformer:
            return None
        donor = next((p for p in map(edge_speed, edge_speed_names()) if p.transformer and p.published_ms), None)
        return donor.device_model() if donor is not None else None

    @property
    def caveat(self) -> str | None:
        """What a report using this profile must say about its device model, if anything."""
        if not self.published_ms:
            return f"{self.name} has no published per-model table: no device model"
        if not self.transformer:
            return (f"{self.name}'s published table has no transformer: its device model prices a ViT's dense and "
                    "attention layers from its CNNs' layers, leaning on the op-class costs of a profile whose table "
                    "has one (scaled to this device)")
        return None

    def check(self) -> SpeedProfile:
        if self.reference_ms is None or not self.source:
            raise ConfigError(f"edge device {self.name} has no sourced speed",
                              fix=f"choose another ({', '.join(edge_speed_names())}) or add a published latency, "
                              f"with its source, to {PROFILE_FILE}")
        return self


def edge_speed_names() -> list[str]:
    return list(_load()["edge_speeds"])


def edge_speed(name: str) -> SpeedProfile:
    return SpeedProfile(**_entry("edge_speeds", name, "edge device", also=("host",))).check()
