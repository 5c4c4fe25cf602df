"""The bench's results as typed values: one row a measured cell, and the whole run (what the report reads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from askexpert_lab.bench.baselines import SystemRow


@dataclass
class ClientsRow:
    """Concurrent edge clients sharing one server: throughput, batching and server energy per image."""

    clients: int
    images_per_s: float
    mean_batch: float
    server_ms_per_image: float
    requests: int
    server_mj_per_image: float
    server_mj_per_image_modelled: float
    server_energy_kind: str
    server_energy_source: str
    server_watts: float | None = None


Row = SystemRow | ClientsRow


def row_from_dict(d: dict) -> Row:
    return ClientsRow(**d) if "clients" in d else SystemRow.from_dict(d)


@dataclass
class BenchResult:
    profile: str
    date: str
    host: str
    machine: dict
    models: dict[str, str]
    policy: dict
    test_images: int
    sweep_images: int
    headline_link: str
    energy: dict
    cells: dict[str, Row]
    seconds: float
    report: str | None = None
    placement: dict | None = None  # how the edge and the server were placed (askexpert_lab.testbed.placement)

    def to_dict(self) -> dict:
        return {**asdict(self), "cells": {k: asdict(v) for k, v in self.cells.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls(**{**d, "cells": {k: row_from_dict(v) for k, v in d["cells"].items()}})

    def row(self, name: str) -> Row | None:
        return self.cells.get(name)
