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


def device(name: str) -> DeviceProfile:
    return DeviceProfile(**_entry("devices", name, "device profile"))


def network(name: str) -> NetworkProfile:
    return NetworkProfile(**_entry("networks", name, "network profile"))


@dataclass(frozen=True)
class SpeedProfile:
    """How fast an edge device runs a reference model: a published figure, with its source."""

    name: str
    description: str
    reference: str  # the reference model (askexpert.testbed.reference.REFERENCES)
    reference_ms: float | None  # its published batch-1 latency on the device
    threads: int
    source: str | None
    energy_profile: str | None = None

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
