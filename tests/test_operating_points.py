"""Operating points end to end, with the real pieces: the tiny system's bundle and its curve, a real server on a
loopback port, a link that changes during the run, build-system choosing from a measured latency budget, a
version-1 bundle, drifted inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest

from askexpert.cli import main
from askexpert.contract.bundle import open_system
from askexpert.contract.schema import SYSTEM_FILE
from askexpert.corruptions import SEVERITIES, Corruption, parse_corruption
from askexpert.errors import ConfigError
from askexpert.routing import RoutingPolicy
from askexpert.runtime.link import LinkSchedule, parse_link, parse_link_arg, parse_schedule
from askexpert.runtime.session import EdgeSettings, _link_signal, run_edge
from askexpert.runtime.settings import Connection, Control, Inputs
from askexpert_lab.testbed.server import ServerProcess

pytestmark = pytest.mark.timeout(300)  # real servers


def _before_v4(raw: dict) -> dict:
    """A system.json without what schema 4 added: re-routing, the server design, experts' has_other."""
    raw["routing"].pop("reroute")
    raw.pop("design")
    for e in raw["experts"]:
        e.pop("has_other")
    return raw


def _v1_copy(bundle, target):
    """The bundle as askexpert 0.x wrote it: schema version 1, no curve, no prediction."""
    shutil.copytree(bundle, target)
    raw = _before_v4(json.loads((target / SYSTEM_FILE).read_text()))
    raw["schema_version"] = 1
    raw.pop("curve")
    raw["routing"]["operating_point"].pop("predicted")
    raw["routing"].pop("deferral")
    (target / SYSTEM_FILE).write_text(json.dumps(raw, indent=1))
    return target


def test_a_version_3_bundle_still_loads_without_re_routing(tiny_system, tmp_path):
    """A bundle written before re-routing and the server design (schema 3) loads as it was: every expert
    with "other", no re-routing, no design record."""
    old = tmp_path / "v3"
    shutil.copytree(tiny_system["bundle"], old)
    raw = _before_v4(json.loads((old / SYSTEM_FILE).read_text()))
    raw["schema_version"] = 3
    (old / SYSTEM_FILE).write_text(json.dumps(raw, indent=1))
    m = open_system(old).manifest
    assert m.schema_version == 3 and m.routing.reroute is None and m.design is None
    assert all(e.has_other for e in m.experts) and RoutingPolicy.from_spec(m.routing).reroute is None


def test_a_version_2_bundle_still_loads_with_its_confidence_rule(tiny_system, tmp_path):
    """A bundle written before the learned deferral rule (schema 2: no routing.deferral) loads as it was."""
    old = tmp_path / "v2"
    shutil.copytree(tiny_system["bundle"], old)
    raw = _before_v4(json.loads((old / SYSTEM_FILE).read_text()))
    raw["schema_version"] = 2
    raw["routing"].pop("deferral")
    (old / SYSTEM_FILE).write_text(json.dumps(raw, indent=1))
    m = open_system(old).manifest
    assert m.schema_version == 2 and m.routing.deferral is None and m.curve is not None
    policy = RoutingPolicy.from_spec(m.routing)
    assert policy.confidence == "max-prob" and policy.deferral is None and policy.tau == m.routing.tau


def test_a_version_1_bundle_still_loads_and_runs(tiny_system, bundle_server, tmp_path):
    """Its answers are the new bundle's, image for image; what needs the curve says so."""
    old = _v1_copy(tiny_system["bundle"], tmp_path / "v1")
    m = open_system(old).manifest
    assert m.schema_version == 1 and m.curve is None
    with ServerProcess(old, threads=1) as url:
        then = run_edge(EdgeSettings(system=old, threads=1, connection=Connection(server=url),
                                     inputs=Inputs(limit=120)))
        with pytest.raises(ConfigError, match="has none .a schema-1 bundle.*askexpert build-system"):
            run_edge(EdgeSettings(system=old, threads=1, connection=Connection(server=url), inputs=Inputs(limit=10),
                                  control=Control(slo_p95_ms=50.0)))
    now = run_edge(EdgeSettings(system=tiny_system["bundle"], threads=1, connection=Connection(server=bundle_server),
                                inputs=Inputs(limit=120)))
    assert then.summary.degraded == 0 and then.summary.offload_rate > 0
    assert [t.pred for t in then.traces] == [t.pred for t in now.traces]
    assert [t.route for t in then.traces] == [t.route for t in now.traces]


def test_the_edge_holds_its_slo_when_the_link_changes(tiny_system, bundle_server):
    """A fast link for 20 images (before the controller may climb: it starts at the bundle's 30% point), then
    one whose 60 ms round trip alone breaks a 30 ms SLO: the controller moves tau down the curve; every image's
    trace says the tau and link in force and why tau last changed."""
    schedule = parse_link_arg("rtt=0.5ms,bw=1000mbit@0,rtt=60ms,bw=10mbit@20")
    report = run_edge(EdgeSettings(system=tiny_system["bundle"], threads=1,
                                   connection=Connection(server=bundle_server, link=schedule), inputs=Inputs(limit=300),
                                   control=Control(slo_p95_ms=30.0)))
    traces = report.traces
    assert [t.link for t in traces] == ["rtt=0.5ms,bw=1000mbit"] * 20 + ["rtt=60ms,bw=10mbit"] * 280
    # every image went where the tau in force sends it (the router compares in float32)
    assert all(t.route.offloaded == (np.float32(t.confidence) < np.float32(t.tau)) for t in traces)
    assert all(t.tau_why for t in traces) and traces[0].tau_why.startswith("start")
    c = report.control
    assert c.mode == "slo-p95" and c.windows == 3 and len(c.p95_by_window) == 3
    bundle = open_system(tiny_system["bundle"]).manifest
    assert c.changes[0].tau == bundle.routing.tau  # it starts at the bundle's point
    moved = c.changes[1:]
    assert any(ch.image > 20 and ch.why.startswith("down") and "SLO p95 30 ms" in ch.why for ch in moved)
    assert moved[-1].val_offload_rate <= 5.0  # slow offloads: a few per cent at most
    assert {ch.tau for ch in c.changes} <= {p.tau for p in bundle.curve.for_k(report.policy.k)}  # along the curve
    assert report.summary.degraded == 0


def test_the_edge_keeps_an_energy_budget(tiny_system, bundle_server):
    """--energy-budget moves tau along the bundle's curve by the edge's energy (the one formula, a Pi 4's
    power): a budget no point keeps takes it down, step by step, and the images after the last step are
    offloaded less than the bundle's point would have, at less energy; under a budget every point keeps,
    every move is to a more accurate point. The windows are judged by the same formula."""
    from askexpert.costs.energy import edge_energy_j, edge_times
    from askexpert.costs.profiles import device, network

    def run(budget):
        report = run_edge(EdgeSettings(system=tiny_system["bundle"], threads=1,
                                       connection=Connection(server=bundle_server), inputs=Inputs(limit=300),
                                       control=Control(energy_budget_mj=budget)))
        assert report.control.mode == "energy-budget" and report.control.windows == 3
        assert report.summary.degraded == 0 and all(t.tau_why for t in report.traces)
        return report

    curve = open_system(tiny_system["bundle"]).manifest.curve.for_k(3)
    pi4, wifi = device("raspberry-pi-4"), network("wifi")
    tight = run(0.01)
    c, traces = tight.control, tight.traces
    start, last = c.changes[0], c.changes[-1]
    assert len(c.changes) > 1 and all(ch.why.startswith("down: edge energy 0.01 mJ") for ch in c.changes[1:])
    assert [ch.tau for ch in c.changes] == sorted((ch.tau for ch in c.changes), reverse=True)
    assert last.tau < start.tau and last.val_offload_rate < start.val_offload_rate
    after = traces[last.image:]
    assert len(after) >= 100 and {t.tau for t in after} == {last.tau}
    conf = np.array([t.confidence for t in after], np.float32)
    sent = sum(t.route.offloaded for t in after)
    would = int((conf < np.float32(start.tau)).sum())
    assert sent == int((conf < np.float32(last.tau)).sum()) < would
    # the same images cost less energy than at the bundle's point, by the one formula: the generalist's term is
    # theirs either way, and each offload adds its wait and its bytes (as measured on the offloads before the
    # first step). Windows of different images, timed on a busy host, would be a race; this holds on every run.
    before = [t for t in traces[:c.changes[1].image] if t.route.offloaded]
    busy, _, _ = edge_times(after)
    _, wait_b, moved_b = edge_times(before)
    offload_j = sum(edge_energy_j(pi4, wifi, 0.0, wait_b / len(before), moved_b / len(before)))
    assert len(before) >= 3 and offload_j > 0
    compute_j = edge_energy_j(pi4, wifi, busy, 0.0, 0.0)[0]
    assert compute_j + sent * offload_j < compute_j + would * offload_j
    assert c.windows_within == 0  # no window of real work costs 0.01 mJ
    loose = run(1e6).control
    accuracy = {p.tau: p.accuracy for p in curve}
    assert loose.windows_within == 3
    # every move is to a more accurate point of the curve (up or down in offload: whichever is better here)
    walk = [accuracy[ch.tau] for ch in loose.changes]
    assert all(b > a for a, b in zip(walk, walk[1:], strict=False))
    assert len(walk) > 1 or walk[0] == max(accuracy[p.tau] for p in curve if p.offload_rate >= 1.0), walk

def test_build_system_chooses_from_a_measured_latency_budget(tiny_system, tmp_path, capsys):
    """The parts measured here (host, a real server with a competing client), the most accurate point within
    the budget kept, its prediction in system.json; an impossible budget refused naming the nearest one."""
    out = tmp_path / "sys"
    args = ["build-system", "--server", "experts",
            str(tiny_system["generalist"]), str(tiny_system["experts"]), "--out", str(out),
            "--edge-device", "host", "--link", "wifi", "--server-load", "1", "--plan-images", "200"]
    assert main([*args, "--p95-latency", "1000"]) == 0
    m = open_system(out).manifest
    op = m.routing.operating_point
    assert op.target == "p95-latency" and op.value == 1000 and op.predicted.p95_ms <= 1000
    assert op.predicted.load == 1 and op.predicted.link_ms == pytest.approx(5.0, abs=0.5)  # wifi: 5 ms RTT
    best = max(p.accuracy for p in m.curve.points)
    assert op.val_accuracy == best  # every point fits 1 s: the most accurate one
    assert any(p.tau == m.routing.tau and p.k == m.routing.k for p in m.curve.points)
    assert "predicted" in capsys.readouterr().out
    assert main([*args, "--p95-latency", "0.001", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "the least any point needs is" in err and "fix: raise --p95-latency to at least" in err
    assert not out.exists()  # nothing half-made stays


def test_drifted_inputs_and_the_label_free_tracker_from_the_cli(tiny_system, tmp_path, capsys):
    """--corrupt drifts the stream from an image on; --target-offload keeps the share without labels (no server
    here: the offloaded images keep the generalist's answer, which is not what is measured)."""
    s = tmp_path / "s.json"
    assert main(["edge", str(tiny_system["bundle"]), "--limit", "300", "--threads", "1", "--corrupt",
                 "gaussian_noise:5@100", "--target-offload", "0.3", "--summary", str(s), "--trace",
                 str(tmp_path / "t.jsonl")]) == 0
    summary = json.loads(s.read_text())
    assert summary["corruption"].startswith("gaussian_noise at severity 5 (c = 0.1") and "from image 100" in \
        summary["corruption"]
    assert summary["control"]["mode"] == "target-offload" and summary["control"]["windows"] == 3
    traces = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert any(t["tau_why"].startswith("tracking 30.0% offload") for t in traces)
    assert "windows of 100 images within offload 30%" in capsys.readouterr().out


def test_corruptions_are_seeded_by_image_and_grow_with_severity():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    for name in SEVERITIES:
        whole = Corruption(name, 3, start=2).apply(images)
        parts = np.concatenate([Corruption(name, 3, start=2).apply(images[:3]),
                                Corruption(name, 3, start=2).apply(images[3:], first_index=3)])
        assert np.array_equal(whole, parts) and np.array_equal(whole[:2], images[:2])  # clean before the start
        change = [np.abs(Corruption(name, s).apply(images).astype(int) - images).mean() for s in (1, 5)]
        assert 0 < change[0] < change[1], name
    flat = np.full((1, 1, 8, 8), 77, dtype=np.uint8)
    assert np.array_equal(Corruption("gaussian_blur", 5).apply(flat), flat)  # a blur keeps a flat image
    assert np.array_equal(Corruption("contrast", 5).apply(flat), flat)  # and so does contrast, about its mean
    rgb = np.array([[[[40]], [[80]], [[120]]]], dtype=np.uint8)  # one pixel, hue kept under brightness
    bright = Corruption("brightness", 5).apply(rgb).astype(float).ravel()
    assert bright[2] == pytest.approx(120 + 0.3 * 255, abs=1)
    assert bright[0] / bright[2] == pytest.approx(1 / 3, abs=0.01)
    with pytest.raises(ConfigError, match="unknown corruption 'fog'"):
        parse_corruption("fog:1")
    with pytest.raises(ConfigError, match="severity 1..5"):
        parse_corruption("contrast:9")
    assert parse_corruption("gaussian-noise:2@50") == Corruption("gaussian_noise", 2, 50)


def test_link_schedules_parse_move_and_answer_a_signal():
    s = parse_schedule("wifi@0,rtt=20ms,bw=20mbit@10,none@20")
    assert [(start, link.name if link else None) for start, link in s.entries] == [
        (0, "wifi"), (10, "rtt=20ms,bw=20mbit"), (20, None)]
    assert s.delay_s(0, 0) == pytest.approx(0.005)
    s.at(15)
    assert s.name == "rtt=20ms,bw=20mbit" and s.delay_s(0, 0) == pytest.approx(0.020)
    s.at(25)
    assert s.name == "none" and s.delay_s(10_000, 0) == 0.0
    assert isinstance(parse_link_arg("wifi@0,lte@5"), LinkSchedule) and parse_link_arg("lte") == parse_link("lte")
    t = parse_schedule("wifi@0,lte@1000")
    with _link_signal(t):  # SIGUSR1 moves to the next link at once
        os.kill(os.getpid(), signal.SIGUSR1)
    assert t.name == "lte"
    t.at(5)
    assert t.name == "lte"  # a signalled change is not undone by the schedule
    for bad, why in (("wifi@5,lte@10", "starts at image 0"), ("wifi@0,lte", "has no @IMAGE"),
                     ("wifi@x", "cannot read the start"), ("wifi@0,lte@0", "one link an image")):
        with pytest.raises(ConfigError, match=why):
            parse_schedule(bad)


def test_competing_clients_load_a_real_server(bundle_server, capsys):
    """`askexpert load`: other edges sharing the server, each one image at a time; what they sent is said."""
    assert main(["load", bundle_server, "--clients", "2", "--seconds", "1.5", "--think-ms", "5"]) == 0
    out = capsys.readouterr().out
    sent, failed = int(out.split(" requests")[0].split()[-1]), int(out.split(" failed")[0].split()[-1])
    assert sent > 0 and failed == 0
