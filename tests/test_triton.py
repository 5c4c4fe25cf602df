"""The experts on a real Triton Inference Server: ``askexpert export triton`` writes a model repository whose
configurations Triton's own protobuf parses, and ``askexpert serve --backend triton`` serves it through PyTriton
(its bundled tritonserver, in the ``.venv-triton`` environment scripts/bootstrap.sh makes); the edge asks it over
the Open Inference Protocol and answers as with askexpert's own server, and a Triton killed mid-run loses
nothing. Where PyTriton's Triton cannot run (not x86-64 glibc Linux) the Triton tests are skipped, saying
why; on x86-64 glibc a missing PyTriton environment is a failure (the test install makes it)."""

from __future__ import annotations

import platform
import threading
import time

import numpy as np
import pytest
from conftest import provided

from askexpert.contract import oip
from askexpert.contract.bundle import open_system
from askexpert.contract.triton_repo import read_manifest
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.link import parse_link_arg
from askexpert.runtime.oip_client import OipExpertClient, bundle_experts
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.runtime.settings import Connection, Inputs, Outputs
from askexpert.system.export_triton import export_triton, parse_config
from askexpert_lab.testbed.server import TritonProcess, triton_python

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def repo(tiny_system, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(tiny_system["bundle"], out)
    return out


def _triton_python() -> str:
    if platform.system() != "Linux" or platform.machine() != "x86_64" or platform.libc_ver()[0] != "glibc":
        pytest.skip(f"PyTriton's Triton runs on x86-64 glibc Linux; this is {platform.system()} "
                    f"{platform.machine()} {platform.libc_ver()[0] or 'without glibc'}")
    python = triton_python()
    if python is None:  # the test install makes one on x86-64 glibc: its absence is a failure, not a skip
        pytest.fail("no environment with PyTriton here: scripts/bootstrap.sh makes .venv-triton "
                    "(or set ASKEXPERT_TRITON_PYTHON)", pytrace=False)
    return python


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton-log") / "triton.log"
    server = TritonProcess(repo, python=_triton_python(), threads=1, log_path=log, startup_timeout_s=180)
    with server as url:
        yield {"url": url, "server": server, "log": log}


def test_the_repository_parses_with_tritons_model_config(repo, tiny_system):
    provided("tritonclient.grpc.model_config_pb2")
    system = open_system(tiny_system["bundle"])
    system_id, models = read_manifest(repo)
    assert system_id == system.system_id
    assert [m.name for m in models] == [*(f"expert-{e.id}" for e in system.manifest.experts), "general"]
    for m in models:
        config = parse_config((repo / m.name / "config.pbtxt").read_text())
        assert config.name == m.name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
        assert list(config.input[0].dims) == [1, 28, 28] and list(config.output[0].dims) == [m.outputs]
        assert config.parameters[oip.SYSTEM_PARAMETER].string_value == system.system_id
        assert config.HasField("dynamic_batching")
    from google.protobuf.text_format import ParseError

    broken = (repo / models[0].name / "config.pbtxt").read_text().replace("max_batch_size", "max_batch")
    with pytest.raises(ParseError):
        parse_config(broken)
    assert "tritonserver --model-repository" in (repo / "README.md").read_text()


def test_triton_answers_as_askexpert_serves(triton, bundle_server, tiny_system):
    bundle = open_system(tiny_system["bundle"])
    images = np.random.default_rng(5).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    with HttpExpertClient(bundle_server) as native, \
            OipExpertClient(triton["url"], bundle_experts(bundle), system_id=bundle.system_id) as on_triton:
        assert on_triton.health().system_id == bundle.system_id  # the pin, from the model's configuration
        for entry in bundle.manifest.experts:
            a, b = native.infer(entry.id, images), on_triton.infer(entry.id, images)
            assert np.array_equal(a.pred, b.pred), entry.id
            assert np.allclose(a.confidence, b.confidence, atol=1e-4)


def test_the_edge_over_triton_answers_as_over_v1(triton, bundle_server, tiny_system):
    base = EdgeSettings(tiny_system["bundle"], inputs=Inputs(limit=80), threads=1)
    v1 = run_edge(base.with_(server=bundle_server))
    on_triton = run_edge(base.with_(server=triton["url"], protocol="v2"))
    assert [t.pred for t in v1.traces] == [t.pred for t in on_triton.traces]
    assert not any(t.degraded for t in on_triton.traces)


def test_a_triton_killed_mid_run_loses_nothing(repo, tiny_system, tmp_path):
    server = TritonProcess(repo, python=_triton_python(), threads=1, log_path=tmp_path / "t.log",
                           startup_timeout_s=180)
    url = server.start()
    predictions = tmp_path / "answers.csv"
    settings = EdgeSettings(system=tiny_system["bundle"], threads=1,
                            connection=Connection(server=url, protocol="v2", timeout_s=0.5, retries=0,
                                                  link=parse_link_arg("rtt=20ms,bw=100mbit")),
                            inputs=Inputs(limit=400),
                            outputs=Outputs(predictions=predictions))  # each offload lasts 20 ms or more
    result = {}
    edge = threading.Thread(target=lambda: result.setdefault("report", run_edge(settings)))
    edge.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not predictions.is_file() or len(predictions.read_text().splitlines()) < 60):
        time.sleep(0.05)
    server.stop(kill=True)  # SIGKILL to Triton's whole process group, mid-run
    edge.join(120)
    traces = result["report"].traces
    assert len(traces) == 400  # every image answered
    offloaded = [t for t in traces if t.expert is not None]
    after = [t for t in offloaded if t.degraded]
    assert after and all(t.pred == t.local_pred for t in after)  # the generalist's answer kept, flagged
    assert not any(t.degraded for t in offloaded[:5])  # before the kill, Triton answered
