"""What the paper-scale bench measured: one row per device, system, link, offload rate and encoding."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from askexpert.costs.energy import Energy
from askexpert.runtime.edge import Latency

PAPER = {"latency_vs_edge_execution": 0.55, "energy_vs_full_offload": 0.54}  # Liu and Fahmy 2026, abstract
H100_DEIT_SMALL_MS = 4.6  # shared DESIGN.md: deit_small_patch16_224 fp16, batch 1, eager, one H100 (measured)


@dataclass
class Row:
    device: str
    system: str
    link: str | None
    rate: float | None
    encoding: str
    images: int
    offload_rate: float
    latency_ms: Latency
    breakdown_ms_offloaded: dict[str, float]
    up_bytes_per_offload: float
    energy: Energy
    projected_h100: Latency | None = None  # the same with the H100's DeiT-Small time on the server


@dataclass
class ScaleResult:
    profile: dict
    machine: dict
    system: dict
    placements: dict[str, dict]
    rows: list[Row]
    seconds: float
    report: str | None = None
    notes: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)  # the cells this invocation measured (the rest: read back)

    def to_dict(self) -> dict:
        return asdict(self)

    def find(self, device_name: str, system: str, link: str | None = None, rate: float | None = None,
             encoding: str = "raw") -> Row | None:
        return next((r for r in self.rows if r.device == device_name and r.system == system
                     and r.link == link and r.rate == rate and r.encoding == encoding), None)
