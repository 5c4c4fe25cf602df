"""The edge against a server that misbehaves in every way found (a fake one on a real loopback socket:
maintenance pages, no specialists, wrong result counts, class ids it has no classes for, NaN, a
trickle), and against being killed: answers are written as they are made and a rerun resumes."""

from __future__ import annotations

import contextlib
import csv
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import metric

from askexpert.contract.bundle import open_system
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.edge import EdgeRunner, Route, summarize
from askexpert.runtime.session import EdgeSettings, edge_system, run_edge
from askexpert.runtime.settings import Connection, Inputs, Outputs
from askexpert_lab.testbed.server import ServerProcess

pytestmark = pytest.mark.timeout(240)


class FakeServer:
    """An expert server that answers as told: ``mode`` picks the misbehaviour of the next requests."""

    def __init__(self, bundle: Path) -> None:
        b = open_system(bundle)
        self.system_id = b.system_id
        self.experts = [{"id": e.id, "classes": list(e.classes), "class_names": list(e.class_names),
                         "has_other": True, "model": "m", "timm_name": "t", "parameters": 1,
                         "input_shape": [1, 28, 28], "temperature": 1.0} for e in b.manifest.experts]
        self.mode = "ok"
        self.health = "ok"  # what GET /v1/health answers: ok, html, other-json, no-id, other-id, 404
        self.infer_calls = 0
        self.fail_next: list[tuple[int, dict[str, str]]] = []  # statuses (and headers) for the next infer requests
        self.block_after: int | None = None  # calls beyond this many wait for ``release``
        self.release = threading.Event()
        fake = self

        self.connections: list = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                fake.connections.append(self.connection)

            def log_message(self, *a) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/health":
                    doc = {"status": "ok", "experts": 3, "device": "cpu", "system_id": fake.system_id}
                    if fake.health == "html":
                        self._send(200, b"<html>down for maintenance</html>", "text/html")
                    elif fake.health == "404":
                        self._send(404, b"<html>not found</html>", "text/html")
                    elif fake.health == "other-json":
                        self._send(200, json.dumps({"ok": True, "version": 3}).encode())
                    else:
                        doc["system_id"] = {"no-id": None, "other-id": "f" * 64}.get(fake.health, fake.system_id)
                        self._send(200, json.dumps(doc).encode())
                elif fake.mode == "html":
                    self._send(200, b"<html>down for maintenance</html>", "text/html")
                elif fake.mode == "no-specialists":
                    self._send(200, json.dumps([{**fake.experts[0], "id": "general", "has_other": False}]).encode())
                else:
                    self._send(200, json.dumps(fake.experts).encode())

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.infer_calls += 1
                if fake.fail_next:
                    status, headers = fake.fail_next.pop(0)
                    self._send(status, json.dumps({"detail": f"told to fail with {status}"}).encode(), headers=headers)
                    return
                if fake.block_after is not None and fake.infer_calls > fake.block_after:
                    fake.release.wait()
                n = int(self.headers["X-Shape"].split(",")[0])
                expert = next(e for e in fake.experts if f"/v1/experts/{e['id']}/" in self.path)
                mine = expert["classes"][0]
                results = [{"pred": mine, "confidence": 0.99, "other": False, "topk": [mine], "probs": [0.99]}
                           for _ in range(n)]
                if fake.mode == "count":
                    results = results + results[:1]
                elif fake.mode == "class":
                    results[0] = {**results[0], "pred": 12345}
                elif fake.mode == "nan":
                    results[0] = {**results[0], "confidence": math.nan}
                elif fake.mode == "html":
                    self._send(200, b"<html>down for maintenance</html>", "text/html")
                    return
                elif fake.mode == "503":
                    self._send(503, b"<html>overloaded</html>", "text/html")
                    return
                elif fake.mode == "trickle":  # headers at once, then a byte every 0.3 s: never a read timeout
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.3)
                    except OSError:
                        pass
                    return
                body = {"expert": expert["id"], "results": results,
                        "timings": {"queue_ms": 0.1, "compute_ms": 0.1, "batch_size": n}}
                self._send(200, json.dumps(body).encode())  # json.dumps writes NaN, as the old server did

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        """Stop as a killed server would: the listening socket and every open connection."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fake(tiny_system):
    server = FakeServer(tiny_system["bundle"])
    yield server
    server.close()


def _images(tiny_system, n: int) -> tuple[np.ndarray, np.ndarray]:
    from askexpert.config import DataConfig
    from askexpert.data import load_dataset

    cfg = open_system(tiny_system["bundle"]).manifest.data.config
    test = load_dataset(DataConfig(**cfg)).test
    return test.images[:n].numpy(), test.labels[:n].numpy()


def _runner(tiny_system, url: str, *, from_server: bool) -> EdgeRunner:
    system = edge_system(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=None)))
    client = HttpExpertClient(url, down_for_s=0.0)
    return EdgeRunner(system.model, system.policy, client, None if from_server else system.experts)


@pytest.mark.parametrize("mode", ["html", "no-specialists", "count", "class", "nan"])
def test_every_server_misbehaviour_degrades_instead_of_crashing(tiny_system, fake, mode, caplog):
    images, labels = _images(tiny_system, 60)
    fake.mode = mode
    runner = _runner(tiny_system, fake.url, from_server=mode in ("html", "no-specialists"))
    traces = list(runner.run([(images[i:i + 4], labels[i:i + 4]) for i in range(0, 60, 4)]))
    assert len(traces) == 60 and [t.index for t in traces] == list(range(60))
    offloaded = [t for t in traces if t.route.offloaded]
    degraded = [t for t in offloaded if t.degraded]
    assert offloaded and degraded
    assert all(t.pred == t.local_pred and t.route is Route.DEGRADED and t.error for t in degraded)
    assert all(0 <= t.pred < 10 for t in traces)  # 12345 never becomes an answer
    if mode in ("class", "nan"):  # only the bad answer of each reply is dropped, the others stand
        assert len(degraded) < len(offloaded) and "not one of its classes or not a probability" in caplog.text
        assert all(t.route is Route.EXPERT for t in offloaded if not t.degraded)
    else:
        assert len(degraded) == len(offloaded)
    why = {"html": "not the protocol's JSON", "no-specialists": "no specialist expert",
           "count": r"answered (\d+) results for (\d+) images"}.get(mode)
    if why:
        assert all(re.search(why, t.error) for t in degraded), degraded[0].error
    runner.client.close()


def test_one_deadline_bounds_an_offload_even_against_a_trickling_server(tiny_system, fake):
    fake.mode = "trickle"
    images, _ = _images(tiny_system, 1)
    client = HttpExpertClient(fake.url, Connection(timeout_s=2.0, retries=3, deadline_s=1.0))
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="deadline") as err:
        client.infer("0", images)
    elapsed = time.perf_counter() - t0
    assert type(err.value).__name__ == "ExpertUnavailable" and elapsed < 1.5  # not 60 s, not 4 x 2 s
    client.close()


@pytest.mark.timeout(300)
def test_a_killed_edge_loses_no_answer_and_resumes(tiny_system, fake, tmp_path):
    images, labels = _images(tiny_system, 80)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, images=images, labels=labels)
    reference = tmp_path / "reference.csv"
    run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=fake.url),
                          inputs=Inputs(sources=[str(inputs)]), outputs=Outputs(predictions=reference)))
    calls = fake.infer_calls
    fake.block_after = calls + 3  # the server holds the 4th offload: the edge is mid-run when killed
    predictions, trace = tmp_path / "p.csv", tmp_path / "t.jsonl"
    cmd = [sys.executable, "-m", "askexpert.cli", "edge", str(tiny_system["bundle"]), "--server", fake.url,
           "--input", str(inputs), "--predictions", str(predictions), "--trace", str(trace), "--timeout", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while fake.infer_calls < calls + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.infer_calls >= calls + 4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fake.release.set()
    with open(predictions) as f:
        written = list(csv.DictReader(f))
    assert 3 <= len(written) < 80  # every answer made before the kill is on disk
    assert len(trace.read_text().splitlines()) == len(written)
    resumed = subprocess.run([*cmd, "--resume", "--summary", str(tmp_path / "s.json")], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert predictions.read_text() == reference.read_text()  # the same file as an uninterrupted run
    assert [json.loads(x)["index"] for x in trace.read_text().splitlines()] == list(range(80))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["samples"] == 80 and "resumed" in resumed.stdout
    # resuming against other inputs is refused with the fix
    other = tmp_path / "other.npz"
    np.savez(other, images=images[:40], labels=labels[:40])
    bad = subprocess.run([sys.executable, "-m", "askexpert.cli", "edge", str(tiny_system["bundle"]), "--input",
                          str(other), "--predictions", str(predictions), "--resume"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "same --input" in bad.stderr


def test_summary_of_resumed_answers_counts_timings_only_where_known(tiny_system, bundle_server, tmp_path):
    images, labels = _images(tiny_system, 24)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, images=images, labels=labels)
    p = tmp_path / "p.csv"
    first = run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=bundle_server),
                                  inputs=Inputs(sources=[str(inputs)], limit=None), outputs=Outputs(predictions=p)))
    assert first.summary.offload_rate > 0 and first.summary.degraded == 0
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:11]) + "\n" + lines[11][:5])  # 10 whole rows and a torn one
    again = run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=bundle_server),
                                  inputs=Inputs(sources=[str(inputs)]), outputs=Outputs(predictions=p, resume=True)))
    assert again.resumed == 10 and p.read_text().splitlines() == lines
    assert [t.pred for t in again.traces] == [t.pred for t in first.traces]
    assert math.isnan(again.traces[0].total_ms) and math.isfinite(summarize(again.traces).latency_ms.p50)


@pytest.fixture(scope="module")
def token_server(tiny_system, tmp_path_factory):
    """A real server (``askexpert serve --token-file``) over the tiny bundle."""
    tmp = tmp_path_factory.mktemp("token-server")
    (tmp / "token").write_text("tok-123\n")
    (tmp / "wrong").write_text("not-the-token\n")
    with ServerProcess(tiny_system["bundle"], threads=1, token="tok-123",
                       extra_args=["--token-file", str(tmp / "token")]) as url:
        yield {"url": url, "token_file": tmp / "token", "wrong_file": tmp / "wrong"}


def test_the_edge_sends_its_token_and_never_writes_it_down(tiny_system, token_server, tmp_path, capsys,
                                                           monkeypatch):
    """Against a real server with a token: the edge CLI given it by --token-file, and by ASKEXPERT_TOKEN,
    offloads with nothing degraded, and the token is in no file and no output. Without a token (a real 401)
    or with another (a real 403) the edge refuses at the start, naming the fix, and answers nothing."""
    from askexpert.cli import main

    inputs = _npz(tiny_system, tmp_path, 30)
    base = ["edge", str(tiny_system["bundle"]), "--server", token_server["url"], "--input", str(inputs)]
    monkeypatch.delenv("ASKEXPERT_TOKEN", raising=False)
    for how, extra in (("file", ["--token-file", str(token_server["token_file"])]), ("env", [])):
        if how == "env":
            monkeypatch.setenv("ASKEXPERT_TOKEN", "tok-123")
        summary = tmp_path / f"s-{how}.json"
        assert main([*base, *extra, "--summary", str(summary), "--trace", str(tmp_path / f"t-{how}.jsonl")]) == 0
        s = json.loads(summary.read_text())
        assert s["samples"] == 30 and s["offload_rate"] > 0 and s["degraded"] == 0, (how, s)
        for written in (summary, tmp_path / f"t-{how}.jsonl"):
            assert "tok-123" not in written.read_text()
    out = capsys.readouterr()
    assert "tok-123" not in out.out + out.err
    monkeypatch.delenv("ASKEXPERT_TOKEN")
    for extra, status, why in (([], 401, "no token sent"),
                               (["--token-file", str(token_server["wrong_file"])], 403, "wrong token")):
        predictions = tmp_path / f"p-{status}.csv"
        assert main([*base, *extra, "--predictions", str(predictions)]) == 2
        err = capsys.readouterr().err
        assert f"refuses this edge (HTTP {status}: {why})" in err and "--token-file" in err and "ASKEXPERT_TOKEN" in err
        assert not predictions.exists() or len(predictions.read_text().splitlines()) <= 1  # no answer written


def _requests(url: str, expert: str) -> float:
    """The server's own count of infer requests for ``expert``."""
    return metric(url, f'askexpert_requests_total{{expert="{expert}"}}')


def test_a_server_set_learns_a_late_server_survives_a_dead_one_and_raises_a_4xx_at_once(tiny_system):
    """Two real servers holding the same experts; the second is down when the experts are listed. Once it is
    up and the first is killed, the set learns it and it answers (a prediction that survives a dead server).
    A request the server refuses (4xx) is raised at once, not tried on the next holder. With both gone the
    expert fails alone, saying why."""
    from askexpert.runtime.clients import ExpertUnavailable, ServerSet
    from askexpert_lab.testbed.server import free_port

    late_port = free_port("127.0.0.1")
    first = ServerProcess(tiny_system["bundle"], threads=1)
    late = ServerProcess(tiny_system["bundle"], threads=1, port=late_port)
    images = np.zeros((2, 1, 28, 28), np.uint8)
    with first as url:
        servers = ServerSet([HttpExpertClient(url, Connection(retries=0), down_for_s=0),
                             HttpExpertClient(late.url, Connection(retries=0), down_for_s=0)], relearn_s=0.0)
        try:
            assert [e.id for e in servers.experts()][:3] == ["0", "1", "2"]
            assert [c.base_url for c in servers.where["0"]] == [url]  # the late one was not there to ask
            assert len(servers.infer("0", images).pred) == 2 and _requests(url, "0") == 1
            with late as late_url:
                first.stop(kill=True)
                reply = servers.infer("0", images)  # the first fails, the late one is learned and answers
                assert len(reply.pred) == 2 and reply.server == late_url and _requests(late_url, "0") == 1
                assert [c.base_url for c in servers.where["0"]] == [url, late_url]
                with pytest.raises(ExpertUnavailable) as refused:
                    servers.infer("0", np.zeros((2, 3, 28, 28), np.uint8))  # the wrong shape for this expert
                assert refused.value.status == 400 and "HTTP 400" in str(refused.value)
            with pytest.raises(ExpertUnavailable, match="expert 0:") as gone:
                servers.infer("0", images)
            assert gone.value.status is None
        finally:
            servers.close()


def _npz(tiny_system, tmp_path, n: int) -> Path:
    images, labels = _images(tiny_system, n)
    np.savez(tmp_path / "in.npz", images=images, labels=labels)
    return tmp_path / "in.npz"


@pytest.mark.parametrize("health", ["html", "other-json", "404", "no-id"])
def test_a_bundles_edge_sends_nothing_to_a_server_that_does_not_name_its_system(tiny_system, fake, tmp_path,
                                                                                 health, caplog):
    """A server whose health is not the health document naming the bundle's system, but which answers infer
    requests in the protocol's shape (the expert's first class, confidence 0.99, for every image), gets no
    image: every offloaded sample keeps the generalist's answer, flagged, and the edge says why once."""
    fake.health = health
    inputs = _npz(tiny_system, tmp_path, 80)
    report = run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=fake.url),
                                   inputs=Inputs(sources=[str(inputs)], batch_size=4)))
    offloaded = [t for t in report.traces if t.route.offloaded]
    assert offloaded and fake.infer_calls == 0  # not one image was sent there
    assert all(t.degraded and t.route is Route.DEGRADED and t.pred == t.local_pred for t in offloaded)
    assert all("not this system's expert server" in t.error and "askexpert serve BUNDLE" in t.error
               for t in offloaded)
    assert report.summary.accuracy == report.summary.generalist_accuracy  # none of its answers were used
    said = [r.getMessage() for r in caplog.records if "not this system's expert server" in r.getMessage()]
    assert len(said) == 1, said  # once, not once per offload
    why = {"html": "not the protocol's health document (text/html", "404": "HTTP 404",
           "other-json": "not the protocol's health document", "no-id": "names no system id"}[health]
    assert why in said[0]


def test_a_server_is_asked_again_and_trusted_once_its_health_names_the_system(tiny_system, fake):
    """Distrust is an outage, not a verdict: after ``down_for_s`` the health is asked again; once it names
    the bundle's system the answers are used, and after a failure the server must show it again."""
    system = edge_system(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=None)))
    client = HttpExpertClient(fake.url, down_for_s=0.0, system_id=system.system_id)
    runner = EdgeRunner(system.model, system.policy, client, system.experts)
    images, labels = _images(tiny_system, 80)
    fake.health = "html"
    first = runner.process(images[:40], labels[:40])
    assert fake.infer_calls == 0 and all(t.degraded for t in first if t.route.offloaded)
    fake.health = "ok"
    second = runner.process(images[40:], labels[40:], 40)
    offloaded = [t for t in second if t.route.offloaded]
    assert offloaded and fake.infer_calls == len({t.expert for t in offloaded})  # one request an expert
    assert not any(t.degraded for t in offloaded)
    assert all(t.route is Route.EXPERT for t in offloaded)  # the fake's answers were used
    fake.mode = "503"  # a failure, then another system at the same address
    assert all(t.degraded for t in runner.process(images[:40], labels[:40]) if t.route.offloaded)
    calls = fake.infer_calls
    fake.mode, fake.health = "ok", "other-id"
    again = runner.process(images[:40], labels[:40])
    assert fake.infer_calls == calls and all(t.degraded for t in again if t.route.offloaded)
    assert "names system ffffffffffff" in next(t.error for t in again if t.route.offloaded)
    client.close()


def test_the_right_id_is_used_and_another_id_is_refused_at_the_start(tiny_system, bundle_server, tmp_path):
    """Real servers: the bundle's own answers with nothing degraded; a server of another system (the same
    files, another operating point in system.json, so another id) is refused before any image is sent."""
    from askexpert.contract.schema import SYSTEM_FILE
    from askexpert.errors import AskExpertError

    inputs = _npz(tiny_system, tmp_path, 40)
    report = run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=bundle_server),
                                   inputs=Inputs(sources=[str(inputs)])))
    assert report.summary.offload_rate > 0 and report.summary.degraded == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_system["bundle"], other)
    raw = json.loads((other / SYSTEM_FILE).read_text())
    raw["routing"]["tau"] = raw["routing"]["tau"] / 2
    (other / SYSTEM_FILE).write_text(json.dumps(raw, indent=1))
    assert open_system(other).system_id != open_system(tiny_system["bundle"]).system_id
    with ServerProcess(other, threads=1) as url:
        with pytest.raises(AskExpertError, match="serves another system") as err:
            run_edge(EdgeSettings(system=tiny_system["bundle"], connection=Connection(server=url),
                                  inputs=Inputs(sources=[str(inputs)])))
        assert "askexpert serve BUNDLE" in err.value.fix
        assert all(_requests(url, e) == 0 for e in ("0", "1", "2"))


def test_a_server_set_trusts_each_server_on_its_own(tiny_system, bundle_server):
    """Of two servers holding the same experts, the one whose health is a maintenance page gets no image;
    the other (a real server) answers every request."""
    from askexpert.runtime.clients import ServerSet

    bad = FakeServer(tiny_system["bundle"])  # a maintenance page where the health should be: only a fake does that
    bad.health = "html"
    system_id = open_system(tiny_system["bundle"]).system_id
    servers = ServerSet([HttpExpertClient(u, Connection(retries=0), system_id=system_id)
                         for u in (bad.url, bundle_server)])
    before = _requests(bundle_server, "1")
    try:
        images = np.zeros((2, 1, 28, 28), np.uint8)
        for _ in range(3):
            assert len(servers.infer("1", images).pred) == 2
        assert bad.infer_calls == 0 and _requests(bundle_server, "1") == before + 3
        assert servers.clients[0].is_down and not servers.clients[1].is_down
    finally:
        servers.close()
        bad.close()


def test_the_client_retries_a_5xx_and_a_429_and_gives_up_past_its_retries(fake):
    """A 500, then a 429: with two retries the third attempt answers; with none the first failure is the
    answer, saying the status, and the server is marked down."""
    from askexpert.runtime.clients import ExpertUnavailable

    images = np.zeros((2, 1, 28, 28), np.uint8)
    fake.fail_next = [(500, {}), (429, {})]
    with HttpExpertClient(fake.url, Connection(retries=2, timeout_s=5), backoff_s=0.01) as client:
        assert len(client.infer("0", images).pred) == 2 and fake.infer_calls == 3 and not client.is_down
    fake.fail_next = [(503, {})]
    with HttpExpertClient(fake.url, Connection(retries=0), down_for_s=30) as client:
        with pytest.raises(ExpertUnavailable, match="HTTP 503") as err:
            client.infer("0", images)
        assert err.value.status is None and client.is_down and fake.infer_calls == 4


def test_a_503s_retry_after_is_waited_within_the_deadline_and_kept_as_down_time_beyond_it(fake):
    """The server's Retry-After is its word on when to come back: within the offload's deadline the client
    waits that long (not its own 50 ms backoff) and retries; beyond it the client gives up at once and asks
    nothing of that server until the pause has passed."""
    from askexpert.runtime.clients import ExpertUnavailable

    images = np.zeros((2, 1, 28, 28), np.uint8)
    fake.fail_next = [(503, {"Retry-After": "0.4"})]
    with HttpExpertClient(fake.url, Connection(retries=1, timeout_s=5)) as client:
        t0 = time.monotonic()
        assert len(client.infer("0", images).pred) == 2
        assert time.monotonic() - t0 >= 0.4 and fake.infer_calls == 2
    fake.fail_next = [(503, {"Retry-After": "30"})]
    with HttpExpertClient(fake.url, Connection(retries=3, timeout_s=1), down_for_s=0.1) as client:
        with pytest.raises(ExpertUnavailable, match="asked for 30 s .*Retry-After"):
            client.infer("0", images)
        assert fake.infer_calls == 3  # one attempt: no retry inside the 30 s it asked for
        assert client._down_until - time.monotonic() > 20  # down for the server's 30 s, not its own 0.1 s
        with pytest.raises(ExpertUnavailable, match="marked down"):
            client.infer("0", images)
        assert fake.infer_calls == 3


def test_retry_after_reads_seconds_and_http_dates():
    import email.utils

    import httpx as h

    from askexpert.runtime.clients import retry_after_s

    def resp(value):
        return h.Response(503, headers={} if value is None else {"Retry-After": value})

    assert retry_after_s(resp("2")) == 2.0 and retry_after_s(resp(None)) is None
    assert retry_after_s(resp("soon")) is None and retry_after_s(resp("-5")) == 0.0
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < retry_after_s(resp(later)) <= 60
