"""Energy meters and profiles: modelled exactly, measured backends on their real file formats (or
skipped with a message where no counter exists)."""

from __future__ import annotations

import time

import pytest

from askexpert.costs.meters import JetsonMeter, MeterUnavailable, ModelledMeter, NvmlMeter, RaplMeter, measured_meter
from askexpert.costs.profiles import device, device_names, network, network_names
from askexpert.errors import ConfigError


def test_every_profile_has_a_source_and_the_required_devices():
    names = set(device_names())
    assert {"raspberry-pi-5", "jetson-orin-nano", "laptop-cpu", "h100-batch1", "l4", "jetson-agx-orin"} <= names
    for name in names:
        d = device(name)
        assert d.source.strip() and ("http" in d.source or "DESIGN.md" in d.source), name
        assert d.active_w is None or d.active_w > 0
    for name in network_names():
        assert network(name).joules_per_bit > 0 and "http" in network(name).source


def test_modelled_meter_is_exact():
    meter = ModelledMeter(device("raspberry-pi-4"))
    meter.start()
    meter.add_busy(0.5)
    meter.add_busy(0.25)
    reading = meter.stop()
    assert reading.joules == pytest.approx(5.4 * 0.75) and reading.kind == "modelled"
    assert "raspberry-pi-4" in reading.source and "chipwired" in reading.source
    assert network("wifi").energy_j(1000) == pytest.approx(8000 * 6.45e-7)


def test_a_profile_without_a_sourced_figure_refuses_to_model():
    with pytest.raises(ConfigError, match="no sourced active power.*choose another profile"):
        device("raspberry-pi-5").energy_j(1.0)


def test_unknown_profiles_are_clear_errors():
    with pytest.raises(ConfigError, match="no device profile 'pi9'.*raspberry-pi-4"):
        device("pi9")
    with pytest.raises(ConfigError, match="no network profile"):
        network("carrier-pigeon")


def _rapl_tree(root, energy_uj, max_range=1_000_000):
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    sub = root / "intel-rapl:0:0"  # a sub-zone (core): not counted twice
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    return zone


def test_rapl_meter_reads_powercap_and_handles_wraparound(tmp_path):
    zone = _rapl_tree(tmp_path, 900_000)
    meter = RaplMeter(tmp_path)
    assert "package-0" in meter.source and len(meter.zones) == 1
    meter.start()
    (zone / "energy_uj").write_text("100000\n")  # wrapped past 1,000,000 uJ
    reading = meter.stop()
    assert reading.joules == pytest.approx(0.2) and reading.kind == "measured"


def test_jetson_meter_integrates_rail_power(tmp_path):
    hw = tmp_path / "1-0040" / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "in1_label").write_text("VDD_IN\n")
    (hw / "in1_input").write_text("5000\n")  # mV
    (hw / "curr1_input").write_text("1000\n")  # mA -> 5 W
    meter = JetsonMeter(tmp_path, interval_s=0.005)
    assert meter.power_w() == pytest.approx(5.0) and "VDD_IN" in meter.source
    meter.start()
    time.sleep(0.2)
    reading = meter.stop()
    assert reading.joules == pytest.approx(5.0 * reading.seconds, rel=0.15)


def test_missing_counters_say_what_is_missing(tmp_path):
    with pytest.raises(MeterUnavailable, match="no RAPL package counters"):
        RaplMeter(tmp_path)
    with pytest.raises(MeterUnavailable, match="no Jetson INA3221 power rails"):
        JetsonMeter(tmp_path)


def test_measured_meters_on_this_machine():
    meter, reasons = measured_meter()
    if meter is None:
        pytest.skip("no measured energy counter on this machine: " + "; ".join(reasons))
    meter.start()
    time.sleep(0.1)
    reading = meter.stop()
    assert reading.kind == "measured" and reading.joules >= 0


def test_nvml_meter_where_a_gpu_exists():
    try:
        meter = NvmlMeter()
    except MeterUnavailable as err:
        pytest.skip(f"NVML meter skipped: {err}")
    meter.start()
    time.sleep(0.2)
    assert meter.stop().joules > 0


def test_edge_energy_counts_compute_waiting_and_radio_exactly():
    """Edge energy = active power x compute + idle power x time waiting for offloads + J/bit x bytes."""
    from askexpert.costs.energy import CostModel
    from askexpert.runtime.edge import Route, SampleTrace

    costs = CostModel(device("raspberry-pi-4"), device("h100-batch1"), network("wifi"))
    local = SampleTrace(index=0, label=1, pred=1, local_pred=1, confidence=0.9, route=Route.LOCAL, expert=None,
                        degraded=False, edge_ms=2.0, edge_share_ms=2.0)
    sent = SampleTrace(index=1, label=2, pred=2, local_pred=3, confidence=0.3, route=Route.EXPERT, expert="0",
                       degraded=False, edge_ms=2.0, edge_share_ms=2.0, encode_ms=0.1, network_ms=1.0, link_ms=5.0,
                       queue_ms=0.5, expert_ms=1.5, expert_share_ms=1.5, up_bytes=1000, down_bytes=200)
    out = costs.energy([local, sent])
    compute = 5.4 * 0.004  # both images' generalist, 2 ms each, at 5.4 W
    wait = 2.3 * (1.0 + 5.0 + 0.5 + 1.5) / 1000  # the offloaded one's round trip at 2.3 W idle
    radio = 6.45e-7 * 8 * 1200
    assert out.edge_mj_per_image == pytest.approx(1000 * (compute + wait + radio) / 2)
    assert out.edge_wait_mj_per_image == pytest.approx(1000 * wait / 2)
    assert out.server_mj_per_image == pytest.approx(1000 * 143.0 * 0.0015 / 2)
    assert out.server_mj_per_offloaded_image == pytest.approx(1000 * 143.0 * 0.0015)
    assert "idle" in out.edge_energy_source and out.edge_energy_kind == "modelled"
    # an expert run on the edge (edge execution): its compute is the edge's, nothing waits, the server is idle
    on_edge = SampleTrace(index=2, label=2, pred=2, local_pred=3, confidence=0.3, route=Route.EXPERT, expert="0",
                          degraded=False, edge_ms=2.0, edge_share_ms=2.0, expert_ms=3.0, expert_share_ms=3.0,
                          expert_on_edge=True)
    out = costs.energy([on_edge])
    assert out.edge_mj_per_image == pytest.approx(5.4 * 5.0) and out.server_mj_per_image == 0
    assert out.edge_wait_mj_per_image == 0
