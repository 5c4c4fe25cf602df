"""The one-host testbed: a kernel-throttled (or paced) edge process on its own core, the server on
the others, calibrated against a device's published speed, and cleaned up whatever happens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from askexpert.costs.profiles import SpeedProfile, edge_speed, edge_speed_names
from askexpert.costs.references import ensure_reference
from askexpert.errors import ConfigError
from askexpert_lab.testbed.cgroups import find_controller
from askexpert_lab.testbed.pacing import DevicePacer
from askexpert_lab.testbed.placement import DeviceTooFast, EmulatedEdge
from askexpert_lab.testbed.reference import ReferenceWorkload

pytestmark = [pytest.mark.timeout(600)]

CONTROLLER, WHY_NOT = find_controller()
needs_controller = pytest.mark.skipif(CONTROLLER is None, reason=f"no writable CPU controller: {WHY_NOT}")


@pytest.fixture
def host_reference_ms() -> float:
    """The reference workload's time at full speed on one core of this host (no placement), measured
    afresh for each test: this VM's core speed drifts by up to 2x over minutes."""
    path = ensure_reference("resnet18")
    code = ("import os,sys; os.sched_setaffinity(0,{0}); "
            "from askexpert_lab.testbed.reference import ReferenceWorkload; "
            "print(ReferenceWorkload(sys.argv[1]).time_ms(runs=7))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def slower_device(host_ms: float, slowdown: float = 3.0) -> SpeedProfile:
    return SpeedProfile("test-device", "a device `slowdown` times slower than this host's core", "resnet18",
                        reference_ms=host_ms * slowdown, threads=1, source="this test (a synthetic target)")


def test_every_shipped_speed_profile_has_a_source_and_a_profile_without_one_refuses():
    assert {"rpi4", "snapdragon-820", "jetson-agx-orin-cpu"} <= set(edge_speed_names())
    for name in edge_speed_names():
        p = edge_speed(name)
        assert p.reference_ms > 0 and "http" in p.source
    with pytest.raises(ConfigError, match="no sourced speed"):
        SpeedProfile("x", "unsourced", "resnet18", reference_ms=100.0, threads=1, source=None).check()
    with pytest.raises(ConfigError, match="choose one of"):
        edge_speed("no-such-device")


def _closest_of_attempts(edge: EmulatedEdge, target_ms: float, attempts: int = 3) -> list[float]:
    """The fixed workload re-measured (21 runs, median) after a calibration check, up to ``attempts``
    times until one lands within 15%: this VM's own core speed drifts by +-20% from one second to the
    next (BENCHMARKS.md), which a systematic error (no throttling: x2.6 off) does not hide behind."""
    seen = []
    for i in range(attempts):
        if i:
            edge.recalibrate(f"test-{i}")
        seen.append(edge.reference_ms(runs=21))
        if abs(seen[-1] / target_ms - 1) < 0.15:
            break
    return seen


@needs_controller
def test_kernel_throttled_edge_runs_a_fixed_workload_within_15_percent_of_its_target(host_reference_ms):
    device = slower_device(host_reference_ms)
    with EmulatedEdge(device, mode="kernel") as edge:
        p = edge.placement
        assert p.mode == "kernel-throttled" and p.label == "emulated edge (kernel-throttled)"
        assert edge.cgroup.path.is_dir() and edge.pid in edge.cgroup.pids()
        assert p.quota_us < p.period_us
        measured = _closest_of_attempts(edge, device.reference_ms)  # measured again, after the calibration
        stats = edge.cgroup.throttled()
    print(f"target {device.reference_ms:.1f} ms, re-measured {measured} ms; {p.describe()}")
    assert abs(measured[-1] / device.reference_ms - 1) < 0.15
    assert stats.get("nr_throttled", 0) > 0  # the kernel did the slowing


def test_paced_edge_runs_a_fixed_workload_within_15_percent_of_its_target(host_reference_ms):
    device = slower_device(host_reference_ms)
    with EmulatedEdge(device, mode="paced") as edge:
        p = edge.placement
        assert p.mode == "paced" and p.label == "emulated edge (paced)" and edge.cgroup is None
        assert "paced" in p.describe() and p.pace_factor > 1.5
        measured = _closest_of_attempts(edge, device.reference_ms)
    print(f"target {device.reference_ms:.1f} ms, re-measured {measured} ms; {p.describe()}")
    assert abs(measured[-1] / device.reference_ms - 1) < 0.15


def test_a_device_faster_than_this_host_is_refused_and_leaves_nothing(host_reference_ms):
    fast = slower_device(host_reference_ms, slowdown=0.2)
    before = set(CONTROLLER.root.glob("askexpert-*")) if CONTROLLER else set()
    edge = EmulatedEdge(fast)
    with pytest.raises(DeviceTooFast, match="cannot be emulated"):
        edge.open()
    assert edge._process.poll() is not None  # the edge process was stopped
    if CONTROLLER:
        assert set(CONTROLLER.root.glob("askexpert-*")) == before


@needs_controller
def test_cgroups_are_gone_after_a_normal_exit_and_an_exception(host_reference_ms):
    device = slower_device(host_reference_ms)
    with EmulatedEdge(device, mode="kernel", calibration_runs=3) as edge:
        path, worker = edge.cgroup.path, edge._process
        assert path.is_dir()
    assert not path.exists() and worker.poll() is not None
    with pytest.raises(RuntimeError, match="boom"), EmulatedEdge(device, mode="kernel", calibration_runs=3) as edge:
        path, worker = edge.cgroup.path, edge._process
        raise RuntimeError("boom")
    assert not path.exists() and worker.poll() is not None


@needs_controller
def test_cgroups_are_gone_after_sigterm(tmp_path, host_reference_ms):
    script = tmp_path / "hold.py"
    script.write_text(
        "import json, sys, time\n"
        "from askexpert.costs.profiles import SpeedProfile\n"
        "from askexpert_lab.testbed.placement import EmulatedEdge\n"
        f"d = SpeedProfile('t', 't', 'resnet18', reference_ms={3 * host_reference_ms}, threads=1, source='test')\n"
        "with EmulatedEdge(d, mode='kernel', calibration_runs=3) as e:\n"
        "    print(json.dumps({'cgroup': str(e.cgroup.path), 'worker': e.pid}), flush=True)\n"
        "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    assert Path(info["cgroup"]).is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not Path(info["cgroup"]).exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{info['worker']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{info['worker']}").exists()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: edge and server share it (said in the placement)")
def test_edge_and_server_run_on_different_cores(tiny_system, host_reference_ms):
    from askexpert_lab.testbed.server import ServerProcess

    with EmulatedEdge(slower_device(host_reference_ms), mode="paced", calibration_runs=3) as edge:
        server = ServerProcess(tiny_system["bundle"], cpus=edge.server_cores)
        with server:
            threads = [int(t.name) for t in Path(f"/proc/{server.proc.pid}/task").iterdir()]
            edge_cores = os.sched_getaffinity(edge.pid)
            assert edge_cores == set(edge.placement.edge_cores)
            for tid in threads:  # every thread the server started (uvicorn, the batchers, torch's)
                assert os.sched_getaffinity(tid) == set(edge.placement.server_cores)
            assert not edge_cores & set(edge.placement.server_cores)


@pytest.mark.slow
def test_the_edge_cli_on_an_emulated_device_reports_its_placement(tiny_system, tmp_path):
    """``askexpert edge BUNDLE --device rpi4``: the bundle's edge in its own process, paced by the device model,
    answering over real HTTP, with the placement in the summary."""
    from askexpert.contract.bundle import open_system
    from askexpert_lab.testbed.server import ServerProcess

    bundle = open_system(tiny_system["bundle"])
    rng = np.random.default_rng(0)
    spec = bundle.manifest.input
    images = rng.integers(0, 256, (40, spec.channels, spec.size, spec.size), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", images=images)
    with ServerProcess(tiny_system["bundle"]) as url:
        out = subprocess.run([sys.executable, "-m", "askexpert.cli", "edge", str(tiny_system["bundle"]), "--device",
                              "rpi4", "--server", url, "--input", str(tmp_path / "in.npz"), "--summary",
                              str(tmp_path / "s.json"), "--trace", str(tmp_path / "t.jsonl")],
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    p = summary["placement"]
    assert summary["samples"] == 40 and p["device"] == "rpi4"
    assert p["mode"] == "device-model" and p["label"] in out.stdout.replace("\n", " ")
    assert len(p["device_model"]["fitted_on"]) == len(edge_speed("rpi4").published_ms)
    # slowed towards the device (how close is the calibration tests' subject; this VM drifts +-20%)
    assert p["achieved_ms"] > 1.5 * p["host_ms"] and p["checks"] and "ncnn" in p["source"]
    # the edge's pacer reached its generalist in the edge's process: no call shorter than the device's time
    predicted = DevicePacer(p["device_model"]).device_ms(bundle.generalist_onnx)
    edge_ms = [json.loads(line)["edge_ms"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(edge_ms) == 40 and min(edge_ms) >= predicted, (min(edge_ms), predicted)


def test_local_experts_answer_as_the_server(tiny_system, tmp_path):
    """The edge-execution baselines run the bundle's experts in ONNX on the edge: same answers as the
    server's torch models (one expert and the general model here; the bench exports them all)."""
    from askexpert.contract.bundle import open_system
    from askexpert.contract.labels import GENERAL, OTHER
    from askexpert.models.onnx_export import export_onnx
    from askexpert.runtime.clients import InProcessExpertClient
    from askexpert.serving.pool import ExpertPool
    from askexpert_lab.bench.local_experts import LocalExperts, LocalModelSpec

    bundle = open_system(tiny_system["bundle"])
    m = bundle.manifest
    expert = m.experts[0]
    specs = [LocalModelSpec(expert.id, tmp_path / "e.onnx", (*expert.classes, OTHER), expert.temperature),
             LocalModelSpec(GENERAL, tmp_path / "g.onnx", tuple(range(len(m.classes))), m.general.temperature)]
    export_onnx(bundle.path(expert.checkpoint), specs[0].onnx)
    export_onnx(bundle.path(m.general.checkpoint), specs[1].onnx)
    local = LocalExperts(specs)
    served = InProcessExpertClient(ExpertPool(tiny_system["bundle"], device="cpu"))
    images = np.random.default_rng(1).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    for key in (expert.id, GENERAL):
        a, b = local.infer(key, images), served.infer(key, images)
        assert (a.pred == b.pred).all(), key
        assert np.allclose(a.confidence, b.confidence, atol=1e-4), key
    assert [e.id for e in local.experts()] == [expert.id]


def test_reference_workload_is_cached_and_times_batch_one():
    path = ensure_reference("resnet18")
    assert path.is_file() and ensure_reference("resnet18") == path
    ms = ReferenceWorkload(path).time_ms(runs=3, warmup=1)
    assert 1 < ms < 5000
