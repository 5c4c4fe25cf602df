"""The Open Inference Protocol (KServe v2) on askexpert's own server and in the edge, on a real uvicorn process
on loopback: answers equal to /v1's image by image, tritonclient.http as a real third-party client, the
pinned system refused elsewhere, and the native path's hostile-input probes repeated on the new endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import provided

from askexpert.contract import oip
from askexpert.contract.bundle import open_system
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.oip_client import OipExpertClient, bundle_experts
from askexpert.runtime.session import EdgeSettings, run_edge
from askexpert.runtime.settings import Connection, Inputs, Security

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def bundle(tiny_system):
    return open_system(tiny_system["bundle"])


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_the_codec_round_trips_and_checks_sizes_before_reading():
    images = _images(3)
    for binary in (True, False):
        body, headers = oip.infer_request(images, binary=binary)
        got, header = oip.read_request(body, headers.get(oip.HEADER_LENGTH), expect=[1, 28, 28], max_images=8)
        assert np.array_equal(got, images) and oip.wants_binary(header) == binary
    logits = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    for binary in (True, False):
        body, headers = oip.infer_response("expert-0", logits, request_id="r1", binary=binary, parameters={"a": 1})
        outputs, params = oip.read_response(body, headers.get(oip.HEADER_LENGTH))
        assert np.array_equal(outputs[oip.OUTPUT], logits) and params == {"a": 1}
    probs = oip.answers(logits, 1.7)
    assert np.allclose(oip.answers(oip.scaled_log_probs(probs, 1.7), 1.7), probs, atol=1e-6)
    header = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [2 ** 40, 1, 28, 28],
                                     "parameters": {"binary_data_size": 2 ** 40 * 784}}]}).encode()
    with pytest.raises(oip.OipError, match="at most 8 images") as err:
        oip.read_request(header + b"abc", str(len(header)), expect=[1, 28, 28], max_images=8)
    assert err.value.status == 413


def test_health_and_metadata_name_the_models_and_the_bundle(bundle_server, bundle):
    assert httpx.get(f"{bundle_server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{bundle_server}/v2/health/live").status_code == 200
    assert "binary_tensor_data" in httpx.get(f"{bundle_server}/v2").json()["extensions"]
    for entry in bundle.manifest.experts:
        name = oip.model_name(entry.id)
        for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
            meta = httpx.get(bundle_server + path).json()
            assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
            assert meta["outputs"][0]["shape"] == [-1, len(entry.classes) + 1]
            assert meta["parameters"][oip.SYSTEM_PARAMETER] == bundle.system_id
        assert httpx.get(f"{bundle_server}/v2/models/{name}/ready").status_code == 200
    for path in ("/v2/models/expert-9", "/v2/models/expert-0/versions/2", "/v2/models/expert-9/ready"):
        r = httpx.get(bundle_server + path)
        assert r.status_code == 404 and r.json()["error"], path


def test_oip_answers_equal_v1s_image_by_image(bundle_server, bundle):
    images = _images(12)
    v1 = HttpExpertClient(bundle_server, system_id=bundle.system_id, topk=3)
    v2 = OipExpertClient(bundle_server, bundle_experts(bundle), system_id=bundle.system_id, topk=3)
    with v1, v2:
        for entry in bundle.manifest.experts:
            a, b = v1.infer(entry.id, images), v2.infer(entry.id, images)
            assert np.array_equal(a.pred, b.pred)
            assert np.allclose(a.confidence, b.confidence, atol=1e-5)
            assert [list(r) for r in a.ranked] == [list(r) for r in b.ranked]
            assert b.batch_size >= 1 and b.compute_ms > 0  # the server's timings travel in the parameters
    for binary in (True, False):  # JSON data answers the same as the binary extension
        body, headers = oip.infer_request(images[:2], binary=binary)
        r = httpx.post(f"{bundle_server}/v2/models/expert-0/infer", content=body, headers=headers)
        assert r.status_code == 200
        logits = oip.read_response(r.content, r.headers.get(oip.HEADER_LENGTH))[0][oip.OUTPUT]
        assert logits.shape == (2, len(bundle.manifest.experts[0].classes) + 1)


def test_tritonclient_asks_askexpert_like_a_triton(bundle_server, bundle):
    triton = provided("tritonclient.http")
    client = triton.InferenceServerClient(bundle_server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("expert-1")
    assert client.get_model_metadata("expert-1")["inputs"][0]["datatype"] == "UINT8"
    images = _images(5, seed=3)
    inp = triton.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=True)
    result = client.infer("expert-1", [inp], outputs=[triton.InferRequestedOutput("logits", binary_data=True)])
    entry = bundle.manifest.experts[1]
    probs = oip.answers(result.as_numpy("logits"), entry.temperature)
    with HttpExpertClient(bundle_server, topk=1) as v1:
        reply = v1.infer(entry.id, images)
    output_ids = [*entry.classes, -1]
    assert [output_ids[i] for i in probs.argmax(1)] == reply.pred.tolist()
    assert np.allclose(probs.max(1), reply.confidence, atol=1e-5)
    client.close()


def test_hostile_oip_requests_get_json_4xx_and_the_server_lives_on(bundle_server):
    url = f"{bundle_server}/v2/models/expert-0/infer"
    good = _images(2)

    def binary(tensor: dict, data: bytes, outputs=None) -> tuple[bytes, dict]:
        header = json.dumps({"inputs": [tensor], **({"outputs": outputs} if outputs else {})}).encode()
        return header + data, {oip.HEADER_LENGTH: str(len(header)), "Content-Type": oip.BINARY}

    base = {"name": "images", "datatype": "UINT8", "shape": [2, 1, 28, 28], "parameters": {"binary_data_size": 1568}}
    cases = [
        binary({**base, "datatype": "FP32", "parameters": {"binary_data_size": 6272}}, b"\0" * 6272),  # datatype
        binary({**base, "shape": [2, 1, 14, 56]}, good.tobytes()),  # shape
        binary({**base, "name": "pixels"}, good.tobytes()),  # tensor name
        binary(base, good.tobytes()[:-10]),  # fewer bytes than declared
        binary({**base, "parameters": {"binary_data_size": 1500}}, good.tobytes()),  # size disagrees with the shape
        binary(base, good.tobytes() + b"extra"),  # bytes after the tensors
        binary(base, good.tobytes(), outputs=[{"name": "probs"}]),  # an output the model does not have
        (json.dumps({"inputs": [{**base, "parameters": {}, "data": [1, 2, 3]}]}).encode(), {}),  # wrong count
        (json.dumps({"inputs": [{**base, "parameters": {}, "data": [300] * 1568}]}).encode(), {}),  # not UINT8
        (b"{not json", {}),
        (b"{}", {oip.HEADER_LENGTH: "99999"}),
        (json.dumps({"inputs": []}).encode(), {}),
    ]
    with httpx.Client() as c:
        for body, headers in cases:
            r = c.post(url, content=body, headers=headers)
            assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", (headers, r.text)
            assert r.json()["error"]
        body, headers = oip.infer_request(good)
        for path in ("/v2/models/expert-9/infer", "/v2/models/expert-0/versions/7/infer"):
            r = c.post(bundle_server + path, content=body, headers=headers)
            assert r.status_code == 404 and r.json()["error"]
        assert c.post(url, content=body, headers=headers).status_code == 200  # still answering
    metrics = httpx.get(f"{bundle_server}/metrics").text
    assert 'askexpert_errors_total{expert="expert-0",reason="bad_body"}' in metrics or 'reason="bad_body"' in metrics


def test_an_oversized_oip_body_is_refused_unread_and_memory_stays_flat(bundle_server_process):
    url = f"{bundle_server_process.url}/v2/models/expert-0/infer"
    pid = bundle_server_process.proc.pid

    def rss_mb() -> float:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    def chunks():  # no Content-Length: the limit holds while the body streams
        for _ in range(256):
            yield b"\0" * (1 << 20)

    before = rss_mb()
    r = httpx.post(url, content=chunks(), headers={"Content-Type": oip.BINARY, oip.HEADER_LENGTH: "10"})
    assert r.status_code == 413 and r.json()["error"]
    assert rss_mb() - before < 50  # 256 MiB were never held


def test_the_edge_over_oip_answers_as_over_v1(tiny_system, bundle_server):
    v1 = run_edge(EdgeSettings(tiny_system["bundle"], Connection(server=bundle_server), inputs=Inputs(limit=80),
                               threads=1))
    v2 = run_edge(EdgeSettings(tiny_system["bundle"], Connection(server=bundle_server, protocol="v2"),
                               inputs=Inputs(limit=80), threads=1))
    assert [t.pred for t in v1.traces] == [t.pred for t in v2.traces]
    assert [t.expert for t in v1.traces] == [t.expert for t in v2.traces]
    assert sum(t.expert is not None for t in v2.traces) > 0 and not any(t.degraded for t in v2.traces)


def test_a_server_that_cannot_show_the_bundle_is_refused_unless_trusted(experts_server, bundle):
    """The expert run directory's server holds the same experts but names no system."""
    infos = bundle_experts(bundle)
    with OipExpertClient(experts_server, infos, system_id=bundle.system_id) as client, \
            pytest.raises(ExpertUnavailable, match="names no system"):
        client.infer(infos[0].id, _images(1))
    with OipExpertClient(experts_server, infos, security=Security(trust_unpinned=True),
                         system_id=bundle.system_id) as client:
        assert len(client.infer(infos[0].id, _images(2)).pred) == 2
    with OipExpertClient(experts_server, infos, system_id="f" * 64) as client, \
            pytest.raises(ExpertUnavailable, match="not this system's OIP server"):
        client.experts()
