"""The one energy formula, shared by the demo, the edge CLI and the bench.

Per image: edge compute (its share of the generalist's batch, plus its expert's share where the
expert ran on the edge) at the edge profile's active power; the edge's idle power while it waits for
an offloaded answer; radio energy for the bytes it moved; and the server's share of the batches it
ran in at the server profile's power (or a measured meter's reading). Every figure is labelled
measured or modelled, with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

from askexpert.costs.device_model import GraphFeatures
from askexpert.costs.profiles import DeviceProfile, NetworkProfile
from askexpert.costs.server_device import ServerDevice


@dataclass
class Energy:
    """Energy per image, in millijoules, with how it was obtained."""

    edge_mj_per_image: float  # edge compute + edge waiting + radio
    edge_compute_mj_per_image: float
    edge_wait_mj_per_image: float
    radio_mj_per_image: float
    edge_energy_kind: str
    edge_energy_source: str
    bytes_per_image: float
    server_mj_per_image: float
    server_energy_kind: str
    server_energy_source: str
    server_mj_per_offloaded_image: float
    total_mj_per_image: float
    server_energy_label: str = ""  # the short form printed beside every server figure

    @property
    def server_label(self) -> str:
        """``measured: NVML ...`` or ``modelled: PROFILE's W x compute time on WHERE``."""
        return f"{self.server_energy_kind}: {self.server_energy_label or self.server_energy_source}"


def edge_energy_j(edge: DeviceProfile, radio: NetworkProfile, busy_s: float, wait_s: float,
                  moved_bytes: float) -> tuple[float, float, float]:
    """The edge's energy, in joules: compute (``busy_s`` at the active power), waiting for offloads
    (``wait_s`` at the idle power; 0 without a sourced one) and the radio for ``moved_bytes``. The one
    formula of measured traces (:meth:`CostModel.energy`) and of predictions (:mod:`askexpert.costs.plan`)."""
    return edge.energy_j(busy_s), (edge.idle_w or 0.0) * wait_s, radio.energy_j(int(moved_bytes))


def edge_times(traces) -> tuple[float, float, float]:
    """What the edge spent on ``traces``: seconds computing (its share of the generalist's batches, and of
    the experts' where they ran on the edge), seconds waiting for offloads (the device stays powered,
    idle), and bytes moved."""
    busy = sum(t.edge_share_ms + (t.expert_share_ms if t.expert_on_edge else 0.0) for t in traces) / 1000
    wait = sum(t.network_ms + t.link_ms + t.queue_ms + t.expert_ms for t in traces
               if t.route.offloaded and not t.expert_on_edge) / 1000
    return busy, wait, sum(t.up_bytes + t.down_bytes for t in traces)


def expected_edge_mj(edge: DeviceProfile, radio: NetworkProfile, *, edge_ms: float, rate: float, wait_ms: float,
                     moved_bytes: float) -> float:
    """The edge's mean energy an image (mJ) when a share ``rate`` of the images is offloaded: the generalist's
    ``edge_ms`` at the active power, each offload's ``wait_ms`` at the idle power and its ``moved_bytes``
    through the radio (the cost model's prediction and the energy controller's, by the one formula)."""
    return 1000 * sum(edge_energy_j(edge, radio, edge_ms / 1000, rate * wait_ms / 1000, rate * moved_bytes))


def edge_mj_per_image(traces, edge: DeviceProfile, radio: NetworkProfile) -> float:
    """The edge's energy an image of ``traces`` (mJ): the same formula as :meth:`CostModel.energy`."""
    return 1000 * sum(edge_energy_j(edge, radio, *edge_times(traces))) / max(len(traces), 1)


@dataclass
class CostModel:
    """``server_where``: where the server's compute times were measured (``this host's CPU (AMD EPYC)``),
    named in every server figure's label. ``server_device``: the server was paced to that near-edge device
    (``askexpert serve --server-device``): each offloaded image is priced by its batch model from its share of
    the batch's (paced) time and its expert's graph (``server_features``, by expert id), not at ``server``'s
    power."""

    edge: DeviceProfile
    server: DeviceProfile
    radio: NetworkProfile
    server_where: str = "this host"
    server_device: ServerDevice | None = None
    server_features: dict[str, GraphFeatures] | None = None

    def _server_modelled(self, traces) -> tuple[float, str, str]:
        """The server's joules over ``traces``, its short label and its source."""
        busy = [t for t in traces if not t.expert_on_edge and t.expert_share_ms > 0]
        if self.server_device is None:
            server_j = self.server.energy_j(sum(t.expert_share_ms for t in busy) / 1000)
            label = f"{self.server.name}'s {self.server.active_w:g} W x compute time on {self.server_where}"
            return server_j, label, (f"{self.server.name} ({self.server.description}; {self.server.active_w:g} W) x "
                                     f"each image's share of its server batch's compute time, measured on "
                                     f"{self.server_where}")
        d, feats = self.server_device, self.server_features or {}
        missing = sorted({t.expert for t in busy} - set(feats))
        if missing:
            raise ValueError(f"no graph features for expert(s) {', '.join(map(str, missing))}")
        server_j = sum(d.share_mj(feats[t.expert], t.expert_share_ms) for t in busy) / 1000
        return server_j, f"{d.name}'s batch model (server paced to it)", (
            f"{d.describe()}: each image's share of its paced batch time at the device's static power, plus its "
            f"own work ({d.source})")

    def energy(self, traces, server_measured_j: float | None = None, server_meter: str | None = None) -> Energy:
        """Energy per image of ``traces`` (:class:`~askexpert.runtime.edge.SampleTrace`)."""
        n = max(len(traces), 1)
        edge_busy_s, edge_wait_s, moved = edge_times(traces)
        edge_compute, edge_wait, radio = edge_energy_j(self.edge, self.radio, edge_busy_s, edge_wait_s, moved)
        wait_text = (f"{self.edge.idle_w} W idle x time waiting for offloads" if self.edge.idle_w
                     else "waiting not counted (no sourced idle power)")
        if server_measured_j is not None:
            server_j, kind, source = server_measured_j, "measured", server_meter or "meter"
            label = source
        else:
            kind = "modelled"
            server_j, label, source = self._server_modelled(traces)
        offloaded = sum(t.route.offloaded and not t.expert_on_edge for t in traces)
        edge_total = edge_compute + edge_wait + radio
        return Energy(
            edge_mj_per_image=1000 * edge_total / n, edge_compute_mj_per_image=1000 * edge_compute / n,
            edge_wait_mj_per_image=1000 * edge_wait / n, radio_mj_per_image=1000 * radio / n,
            edge_energy_kind="modelled",
            edge_energy_source=f"{self.edge.name} ({self.edge.active_w} W active) x edge compute time measured on "
                               f"this host; {wait_text}; {self.radio.name} radio {self.radio.joules_per_bit:g} J/bit",
            bytes_per_image=moved / n, server_mj_per_image=1000 * server_j / n, server_energy_kind=kind,
            server_energy_source=source,
            server_mj_per_offloaded_image=1000 * server_j / offloaded if offloaded else 0.0,
            total_mj_per_image=1000 * (edge_total + server_j) / n, server_energy_label=label,
        )
