"""The expert server against hostile and careless clients, on a real uvicorn process on loopback: size
and time limits on bodies, a cap on requests in flight, oversized requests split, one expert's load
not starving another, hostile shapes answered 4xx in JSON, bearer tokens, TLS, and a schemathesis run
over the OpenAPI schema. Plus the artifact checks (weights_file confinement, a pinned system id)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import metric, provided

from askexpert.cli import main
from askexpert.contract.bundle import open_system, sha256_file
from askexpert.contract.protocol import ProtocolError, decode_images, encode_images
from askexpert.contract.schema import SYSTEM_FILE
from askexpert.errors import CheckpointError, ConfigError
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.settings import Connection, Security
from askexpert.serving.pool import ExpertPool
from askexpert_lab.testbed.server import ServerProcess

pytestmark = pytest.mark.timeout(300)
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 1.5
MAX_IN_FLIGHT = 6


@pytest.fixture(scope="module")
def guarded(tiny_system, tmp_path_factory):
    """A server with a token and tight limits, and its log."""
    tmp = tmp_path_factory.mktemp("guarded")
    (tmp / "token").write_text(TOKEN + "\n")
    log = tmp / "server.log"
    server = ServerProcess(tiny_system["bundle"], threads=1, log_path=log, token=TOKEN,
                           extra_args=["--token-file", str(tmp / "token"), "--body-timeout", str(BODY_TIMEOUT),
                                       "--max-in-flight", str(MAX_IN_FLIGHT), "--max-request-images", "1024",
                                       "--log-level", "info"])
    with server as url:
        yield {"url": url, "log": log, "pid": server.proc.pid, "port": server.port}


def _raw(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    body, headers = encode_images(images)
    return body, {**headers, **AUTH}


def _rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _half_request(port: int, declared: int = 100_000) -> socket.socket:
    """A connection that sends the headers of a POST and a tenth of its body, then stalls."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST /v1/experts/0/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Type: application/octet-stream\r\nX-Shape: 1,1,28,28\r\nContent-Length: {declared}\r\n\r\n"
               ).encode() + b"\0" * (declared // 10))
    return s


def _read_response(s: socket.socket, timeout: float) -> str:
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data.decode(errors="replace")


def test_protocol_refuses_hostile_sizes_before_allocating():
    with pytest.raises(ProtocolError, match="at most 4096 images"):
        decode_images(b"x", "application/octet-stream", f"{2**60 + 1},1,28,28")  # overflowed int64 in np.prod
    npy = io.BytesIO()
    np.save(npy, np.zeros((1, 1, 28, 28), np.uint8))
    huge = npy.getvalue().replace(b"(1, 1, 28, 28)", b"(1000000000, 1, 28, 28)")
    with pytest.raises(ProtocolError, match="at most 4096 images a request, got 1000000000"):  # not a MemoryError
        decode_images(huge, "application/x-npy", None)
    empty = io.BytesIO()
    np.save(empty, np.zeros((0, 1, 28, 28), np.uint8))
    with pytest.raises(ProtocolError, match="at least one image"):  # as the raw format refuses N=0
        decode_images(empty.getvalue(), "application/x-npy", None)
    short = npy.getvalue()[:-5]
    with pytest.raises(ProtocolError, match="declares"):
        decode_images(short, "application/x-npy", None)
    fortran = np.asfortranarray(np.arange(2 * 784, dtype=np.uint8).reshape(2, 1, 28, 28))
    f = io.BytesIO()
    np.save(f, fortran)
    assert np.array_equal(decode_images(f.getvalue(), "application/x-npy", None), fortran)


def test_bodies_over_the_limit_are_refused_unread_and_memory_stays_flat(guarded):
    url = f"{guarded['url']}/v1/experts/0/infer"
    before = _rss_mb(guarded["pid"])
    s = socket.create_connection(("127.0.0.1", guarded["port"]))  # declares 1 GiB, sends 3 bytes
    s.sendall(f"POST /v1/experts/0/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
              "application/octet-stream\r\nX-Shape: 1369568,1,28,28\r\nContent-Length: 1073741824\r\n\r\nabc".encode())
    answer = _read_response(s, 5)
    s.close()
    assert answer.startswith("HTTP/1.1 413") and "limit of" in answer and "connection: close" in answer.lower()

    def chunks():  # no Content-Length: the limit holds while the body streams
        for _ in range(64):
            yield b"\0" * (1 << 20)

    streamed = httpx.post(url, content=chunks(), headers={"Content-Type": "application/octet-stream",
                                                          "X-Shape": "85000,1,28,28", **AUTH})
    assert streamed.status_code == 413 and "send fewer images" in streamed.json()["detail"]
    assert _rss_mb(guarded["pid"]) - before < 50  # the 1 GiB and 64 MiB bodies were never held


def test_half_sent_bodies_time_out_and_requests_beyond_the_cap_get_503(guarded):
    stalled = [_half_request(guarded["port"]) for _ in range(MAX_IN_FLIGHT)]
    time.sleep(0.3)
    extra = httpx.get(f"{guarded['url']}/v1/health", headers=AUTH)
    assert extra.status_code == 503 and extra.headers["Retry-After"] == "1" and "in flight" in extra.json()["detail"]
    answers = [_read_response(s, BODY_TIMEOUT + 3) for s in stalled]
    for s in stalled:
        s.close()
    assert all(a.startswith("HTTP/1.1 408") and "did not arrive within 1.5 s" in a for a in answers)
    body, headers = _raw(np.zeros((2, 1, 28, 28), np.uint8))
    assert httpx.post(f"{guarded['url']}/v1/experts/0/infer", content=body, headers=headers).status_code == 200
    metrics = httpx.get(f"{guarded['url']}/metrics", headers=AUTH).text
    assert 'reason="overloaded"' in metrics and 'reason="body_timeout"' in metrics


def test_hostile_shapes_get_json_4xx_and_the_connection_lives_on(guarded):
    url = f"{guarded['url']}/v1/experts/1/infer"
    with httpx.Client(headers=AUTH) as c:  # one keep-alive connection through every case
        cases = [({"Content-Type": "application/octet-stream", "X-Shape": f"{2**60 + 1},1,28,28"}, b"xx"),
                 ({"Content-Type": "application/octet-stream", "X-Shape": "1,1,28"}, b"xx"),
                 ({"Content-Type": "application/octet-stream", "X-Shape": "1,1,28,-28"}, b"xx"),
                 ({"Content-Type": "application/octet-stream", "X-Shape": "99999999999999999999999,1,1,1"}, b"x")]
        npy = io.BytesIO()
        np.save(npy, np.zeros((1, 1, 28, 28), np.uint8))
        cases.append(({"Content-Type": "application/x-npy"},
                      npy.getvalue().replace(b"(1, 1, 28, 28)", b"(1000000000, 1, 28, 28)")))
        empty = io.BytesIO()
        np.save(empty, np.zeros((0, 1, 28, 28), np.uint8))
        cases.append(({"Content-Type": "application/x-npy"}, empty.getvalue()))
        for headers, body in cases:
            r = c.post(url, content=body, headers=headers)
            assert r.status_code == 400 and r.headers["content-type"] == "application/json", (headers, r.text)
            assert r.json()["detail"]
        body, headers = encode_images(np.zeros((3, 1, 28, 28), np.uint8))
        assert c.post(url, content=body, headers=headers).status_code == 200  # same connection, still fine


def _queued(client: httpx.Client, expert: str) -> float:
    """The server's ``askexpert_queue_depth`` for ``expert`` (set when a request is queued and when it is
    answered: non-zero while one is in flight)."""
    return metric(client, f'askexpert_queue_depth{{expert="{expert}"}}')


def test_an_oversized_request_runs_split_and_another_expert_is_not_held_up(guarded, tiny_system):
    """1,024 images run as batches of --max-batch and come back in order. While expert 0 works through three
    such requests (48 batches of 64), a one-image request to expert 1 is answered before they all are. It is
    sent once the server's own metrics show them queued: no assumption about this CPU's speed, only that one
    batch of one image is shorter than the dozens of batches of 64 still ahead of expert 0."""
    images = np.random.default_rng(0).integers(0, 256, (1024, 1, 28, 28), dtype=np.uint8)
    done = {}

    def big(i):
        with HttpExpertClient(guarded["url"], Connection(timeout_s=120), Security(token=TOKEN)) as c:
            reply = c.infer("0", images)
            done[i] = (reply, time.perf_counter())

    threads = [threading.Thread(target=big, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=guarded["url"], headers=AUTH) as metrics:
        while _queued(metrics, "0") < 1024 and any(t.is_alive() for t in threads):
            time.sleep(0.002)
        seen = any(t.is_alive() for t in threads)
    with HttpExpertClient(guarded["url"], Connection(timeout_s=60), Security(token=TOKEN)) as c:
        small = c.infer("1", images[:1])
        small_t = time.perf_counter()
    for t in threads:
        t.join()
    assert seen, "expert 0's requests were never seen queued"
    assert small.batch_size == 1 and small_t < max(t for _, t in done.values())  # not held up behind expert 0
    pool = ExpertPool(tiny_system["bundle"], include_general=False)
    local = pool.infer("0", images).probs.argmax(1).numpy()
    expected = np.asarray(pool.models["0"].output_ids)[local]
    for reply, _ in done.values():
        assert reply.batch_size == 64  # 1,024 images ran as batches of --max-batch, not as one
        assert (reply.pred == expected).mean() > 0.99  # the parts were put back together in order


def test_a_model_answering_nan_gets_a_json_500_and_others_stay_standard_json(tiny_system, tmp_path):
    """A real server whose expert 0 has NaN weights (its checkpoint rewritten, its sha256 with it): that
    expert answers a JSON 500 naming the fault, the others standard JSON, and the process keeps serving."""
    import safetensors.torch

    experts = tmp_path / "experts"
    shutil.copytree(tiny_system["experts"], experts, ignore=shutil.ignore_patterns("logits", "state.*"))
    weights, meta_path = experts / "expert-0" / "model.safetensors", experts / "expert-0" / "model.json"
    state = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
             for k, v in safetensors.torch.load_file(str(weights)).items()}
    safetensors.torch.save_file(state, str(weights), metadata={"format": "askexpert-checkpoint"})
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "weights_sha256": sha256_file(weights)}))
    body, headers = encode_images(np.zeros((2, 1, 28, 28), np.uint8))

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    with ServerProcess(experts, threads=1, log_path=tmp_path / "server.log") as url, httpx.Client(base_url=url) as c:
        broken = c.post("/v1/experts/0/infer", content=body, headers=headers)
        assert broken.status_code == 500 and broken.headers["content-type"] == "application/json"
        assert "non-finite" in strict(broken.text)["detail"]
        for _ in range(2):  # and again: the worker that met the fault keeps serving
            fine = c.post("/v1/experts/1/infer", content=body, headers=headers)
            assert fine.status_code == 200 and len(strict(fine.text)["results"]) == 2
        assert c.post("/v1/experts/0/infer", content=body, headers=headers).status_code == 500
        assert 'askexpert_errors_total{expert="0",reason="non_finite"} 2.0' in c.get("/metrics").text


def test_tokens_401_403_and_a_client_that_sends_one(guarded):
    url = guarded["url"]
    missing = httpx.get(f"{url}/v1/experts")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "--token-file" in missing.json()["detail"]
    assert httpx.get(f"{url}/docs").status_code == 401
    assert httpx.get(f"{url}/v1/experts", headers={"Authorization": "Bearer nope"}).status_code == 403
    with HttpExpertClient(url, security=Security(token=TOKEN)) as ok:
        assert [e.id for e in ok.experts()][:3] == ["0", "1", "2"]
    with HttpExpertClient(url, security=Security(token="wrong")) as bad, \
            pytest.raises(ExpertUnavailable, match="403") as err:
        bad.infer("0", np.zeros((1, 1, 28, 28), np.uint8))
    assert err.value.status == 403 and not bad.is_down  # a refusal is not an outage


def test_a_client_that_goes_away_mid_body_is_not_an_error_in_the_log(guarded):
    """One client goes away while sending its body, another while its 1,024 images are computed. The log is
    read once the server has dealt with both (its own metrics say so), not after a guess of a sleep: the first
    is an info line, and neither leaves a traceback or an error."""
    gone = 'askexpert_errors_total{expert="0",reason="disconnect"}'
    answered = 'askexpert_images_total{expert="2"}'
    with httpx.Client(base_url=guarded["url"], headers=AUTH) as metrics:
        gone0, answered0 = metric(metrics, gone), metric(metrics, answered)
        s = _half_request(guarded["port"])  # gone while sending its body
        time.sleep(0.2)
        s.close()
        body = np.zeros((1024, 1, 28, 28), np.uint8).tobytes()  # gone while its answer is computed
        s = socket.create_connection(("127.0.0.1", guarded["port"]))
        s.sendall((f"POST /v1/experts/2/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Type: application/octet-stream\r\nX-Shape: 1024,1,28,28\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        s.close()
        deadline = time.monotonic() + 60
        while (metric(metrics, gone) < gone0 + 1 or metric(metrics, answered) < answered0 + 1024) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(metrics, gone) == gone0 + 1 and metric(metrics, answered) == answered0 + 1024
    log = guarded["log"].read_text()
    assert "a client disconnected while sending a request to expert 0" in log
    assert "Traceback" not in log and "ERROR" not in log


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_schemathesis_finds_nothing(guarded, tmp_path):
    """Every operation of /openapi.json, fuzzed: no 5xx, answers as documented (status codes, content
    types, JSON schemas, headers). Schema-valid requests rejected (ST202) is left out: a random binary
    body cannot be an image batch of the expert's shape, which OpenAPI cannot express."""
    st = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run([str(st), "run", f"{guarded['url']}/openapi.json",
                          "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "25", "--seed", "1",
                          "--exclude-checks", "positive_data_acceptance", "--no-color"],
                         capture_output=True, text=True, timeout=170, cwd=tmp_path)  # its cache goes there
    assert run.returncode == 0, run.stdout[-3000:]
    assert "failure" not in run.stdout.split("SUMMARY")[-1].lower().replace("0 failures", "")


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tiny_system, capsys):
    assert main(["serve", str(tiny_system["bundle"]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "there is no token" in err and "--token-file" in err and "--insecure" in err


@pytest.mark.timeout(120)
def test_tls_with_a_private_authority(tiny_system, tmp_path):
    trustme = provided("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ServerProcess(tiny_system["bundle"], threads=1, scheme="https", ca_file=tmp_path / "ca.pem",
                           extra_args=["--ssl-certfile", str(tmp_path / "server.pem"),
                                       "--ssl-keyfile", str(tmp_path / "key.pem")])
    with server as url:
        assert url.startswith("https://")
        with HttpExpertClient(url, security=Security(ca_file=tmp_path / "ca.pem")) as c:
            assert len(c.infer("2", np.zeros((2, 1, 28, 28), np.uint8)).pred) == 2
        with HttpExpertClient(url, Connection(retries=0)) as untrusting, \
                pytest.raises(ExpertUnavailable, match="CERTIFICATE"):
            untrusting.infer("2", np.zeros((1, 1, 28, 28), np.uint8))
        plain = url.replace("https://", "http://")
        with HttpExpertClient(plain, Connection(retries=0)) as c, pytest.raises(ExpertUnavailable):
            c.infer("2", np.zeros((1, 1, 28, 28), np.uint8))


def test_checkpoints_cannot_name_files_outside_their_directory(tiny_system, tmp_path):
    from askexpert.models import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_system["generalist"], run)
    meta = json.loads((run / "model.json").read_text())
    (tmp_path / "elsewhere.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    (run / "model.json").write_text(json.dumps({**meta, "weights_file": "../elsewhere.safetensors"}))
    with pytest.raises(CheckpointError, match="outside"):
        load_checkpoint(run / "model")
    (run / "model.json").write_text(json.dumps({**meta, "weights_file": str(tmp_path / "elsewhere.safetensors")}))
    with pytest.raises(CheckpointError, match="outside"):
        load_checkpoint(run / "model")


def test_a_pinned_system_id_catches_a_consistently_tampered_bundle(tiny_system, tmp_path, capsys):
    published = open_system(tiny_system["bundle"]).system_id
    assert open_system(tiny_system["bundle"], expect_id=published).system_id == published
    copy = tmp_path / "b"
    shutil.copytree(tiny_system["bundle"], copy)
    # a tamperer swaps an expert's weights and rewrites system.json with the new sha256: the bundle
    # is self-consistent (the corruption check passes) and only the published id can tell
    weights = copy / "experts" / "expert-1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    manifest = json.loads((copy / SYSTEM_FILE).read_text())
    manifest["files"]["experts/expert-1/model.safetensors"] = sha256_file(weights)
    (copy / SYSTEM_FILE).write_text(json.dumps(manifest))
    open_system(copy)
    with pytest.raises(CheckpointError, match="not the expected system"):
        open_system(copy, expect_id=published)
    with pytest.raises(ConfigError, match="64 hex digits"):
        open_system(copy, expect_id=published[:12])
    assert main(["serve", str(copy), "--expect-system-id", published]) == 2
    assert "not the expected system" in capsys.readouterr().err
    manifest["files"]["../../etc/passwd"] = "0" * 64  # a file list may not leave the bundle either
    (copy / SYSTEM_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside"):
        open_system(copy)
