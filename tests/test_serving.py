"""The expert server under a real uvicorn process on loopback, real HTTP, real (tiny) checkpoints."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from askexpert.contract.protocol import InferResponse, encode_images, image_results_batched
from askexpert.models import open_checkpoint
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient, InProcessExpertClient
from askexpert.runtime.edge import EdgeRunner, Route, summarize
from askexpert.runtime.edge_models import TorchGeneralist
from askexpert.runtime.inputs import open_input
from askexpert.runtime.settings import Connection, Inputs
from askexpert.serving.batcher import DynamicBatcher
from askexpert.serving.pool import ExpertOutput, ExpertPool
from askexpert.system.calibrate import generalist_policy
from askexpert_lab.testbed.server import ServerProcess, free_port

pytestmark = pytest.mark.timeout(300)  # every test here talks to a real server


@pytest.fixture(scope="module")
def server(experts_server):
    return experts_server


@pytest.fixture(scope="module")
def pool(tiny_system):
    torch.set_num_threads(1)
    return ExpertPool(tiny_system["experts"])


def _test_images(tiny_system, n=64):
    gen = TorchGeneralist(tiny_system["generalist"])
    batches, _, _, _ = open_input("split:test", input_spec=gen.input, class_names=gen.class_names,
                               data=gen.meta.dataset.config, batch_size=n, limit=n)
    images, labels = next(batches)
    return images, labels


def test_health_experts_and_openapi(server, pool):
    assert httpx.get(f"{server}/v1/health").json() == {"status": "ok", "experts": 4, "device": "cpu",
                                                       "system_id": None}  # a run directory, not a bundle
    experts = httpx.get(f"{server}/v1/experts").json()
    assert [e["id"] for e in experts] == ["0", "1", "2", "general"]
    assert sorted(c for e in experts[:3] for c in e["classes"]) == list(range(10))
    assert all(e["has_other"] for e in experts[:3]) and not experts[3]["has_other"]
    assert experts[0]["input_shape"] == [1, 28, 28]
    spec = httpx.get(f"{server}/openapi.json").json()
    body = spec["paths"]["/v1/experts/{expert_id}/infer"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/octet-stream", "application/x-npy", "image/png", "image/jpeg", "image/webp"}


def test_predictions_through_the_server_equal_in_process(server, pool, tiny_system):
    images, _ = _test_images(tiny_system)
    with HttpExpertClient(server) as client:
        for key in pool.ids():
            remote = client.infer(key, images)
            local = pool.infer(key, images).results(3)
            assert remote.pred.tolist() == [r.pred for r in local]
            assert np.allclose(remote.confidence, [r.confidence for r in local], atol=1e-6)
            assert remote.batch_size >= len(images) and remote.compute_ms > 0


def test_edge_over_http_equals_edge_in_process(server, pool, tiny_system):
    gen = TorchGeneralist(tiny_system["generalist"])
    policy = generalist_policy(open_checkpoint(tiny_system["generalist"]), offload_rate=0.3, k=3)
    traces = {}
    for name, client in (("http", HttpExpertClient(server)), ("local", InProcessExpertClient(pool))):
        batches, n, _, _ = open_input("split:test", input_spec=gen.input, class_names=gen.class_names,
                                   data=gen.meta.dataset.config, batch_size=1, limit=200)
        traces[name] = list(EdgeRunner(gen, policy, client).run(batches))
    assert [t.pred for t in traces["http"]] == [t.pred for t in traces["local"]]
    summary = summarize(traces["http"])
    assert summary.degraded == 0 and 15 < summary.offload_rate < 45
    offloaded = [t for t in traces["http"] if t.route is not Route.LOCAL]
    assert all(t.network_ms > 0 and t.expert_ms > 0 and t.total_ms >= t.edge_ms for t in offloaded)


def test_eight_concurrent_clients_all_get_answers(server, tiny_system):
    images, _ = _test_images(tiny_system, 32)
    rng = np.random.default_rng(0)
    jobs = [(str(rng.integers(0, 3)), int(rng.integers(1, 9))) for _ in range(8 * 12)]

    def client_run(part):
        got = []
        with HttpExpertClient(server, Connection(timeout_s=30)) as client:
            for expert, n in part:
                reply = client.infer(expert, images[:n])
                got.append((len(reply.pred), n, reply.batch_size))
        return got

    with ThreadPoolExecutor(8) as pool_:
        results = [r for part in pool_.map(client_run, [jobs[i::8] for i in range(8)]) for r in part]
    assert len(results) == len(jobs) and all(got == n for got, n, _ in results)
    metrics = httpx.get(f"{server}/metrics").text
    assert "askexpert_batch_size_bucket" in metrics and 'askexpert_requests_total{expert="0"}' in metrics
    assert max(b for _, _, b in results) > 8  # some requests shared a batch with others


def test_malformed_requests_get_clear_errors(server, tiny_system):
    url = f"{server}/v1/experts/0/infer"
    images, _ = _test_images(tiny_system, 4)
    body, headers = encode_images(images)
    bad = httpx.post(url, content=body[:-3], headers=headers)
    assert bad.status_code == 400 and "bytes" in bad.json()["detail"]
    assert httpx.post(url, content=body, headers={"Content-Type": "image/gif"}).status_code == 415
    raw_as_png = httpx.post(url, content=body, headers={"Content-Type": "image/png"})  # a known type, a bad body
    assert raw_as_png.status_code == 400 and "not a valid PNG" in raw_as_png.json()["detail"]
    missing = httpx.post(url, content=body, headers={"Content-Type": "application/octet-stream"})
    assert missing.status_code == 400 and "X-Shape" in missing.json()["detail"]
    wrong_shape = np.zeros((2, 3, 28, 28), dtype=np.uint8)
    body3, headers3 = encode_images(wrong_shape)
    shaped = httpx.post(url, content=body3, headers=headers3)
    assert shaped.status_code == 400 and "[1, 28, 28]" in shaped.json()["detail"]
    nope = httpx.post(f"{server}/v1/experts/9/infer", content=body, headers=headers)
    assert nope.status_code == 404 and "0, 1, 2, general" in nope.json()["detail"]
    npy = io.BytesIO()
    np.save(npy, images)
    ok = httpx.post(url, content=npy.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert ok.status_code == 200 and len(InferResponse.model_validate(ok.json()).results) == 4
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    evil = httpx.post(url, content=pickled.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert evil.status_code == 400  # object arrays (pickles) are refused
    assert 'askexpert_errors_total{expert="0",reason="bad_body"}' in httpx.get(f"{server}/metrics").text


def test_the_infer_answer_is_the_v1_wire_format_byte_for_byte(server, pool, tiny_system):
    """The hand-written endpoint writes exactly the documented v1 answer: compact standard JSON, keys in
    InferResponse's order, the top-k of the expert's NumPy batch path; topk read as Starlette reads it."""
    import json

    images, _ = _test_images(tiny_system, 5)
    body, headers = encode_images(images[:1])
    url = f"{server}/v1/experts/1/infer"
    for n, query, k in ((1, "", 3), (1, "?topk=2", 2), (5, "?topk=12", 12), (1, "?topk=1&topk=5", 5)):
        body, headers = encode_images(images[:n])
        r = httpx.post(url + query, content=body, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        answer = json.loads(r.content)
        expected = {"expert": "1", "results": _batched(pool.infer("1", images[:n]), k),
                    "timings": answer["timings"]}
        assert list(answer) == ["expert", "results", "timings"] and list(answer["timings"]) == [
            "queue_ms", "compute_ms", "batch_size"]
        assert [(x["pred"], x["topk"]) for x in answer["results"]] == [
            (x["pred"], x["topk"]) for x in expected["results"]]
        for got, want in zip(answer["results"], expected["results"], strict=True):
            assert np.allclose(got["probs"], want["probs"], atol=1e-6) and got["other"] == want["other"]
        assert r.content == json.dumps({**answer}, separators=(",", ":")).encode()  # compact, nothing else
        # the schema's own (re-routing's fields, expert and tries, come only in a re-routed request's answer)
        assert InferResponse.model_validate_json(r.content).model_dump(mode="json", exclude_none=True) == answer
        assert len(answer["results"][0]["topk"]) == min(k, len(pool.get("1").output_ids))
    assert httpx.post(url + "?topk=x", content=body, headers=headers).status_code == 422
    assert httpx.post(url + "?topk=0", content=body, headers=headers).status_code == 422


def _batched(out: ExpertOutput, k: int) -> list[dict]:
    return image_results_batched(out.probs.numpy(), out.output_ids, k)


def test_the_one_image_answer_path_equals_the_batch_path():
    """ExpertOutput.result_dicts answers one image in plain Python (the edge's request): the same top-k,
    ties towards the lower output, as the NumPy path; a non-finite row takes the NumPy path."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(2, 120))
        probs = rng.random(n).astype(np.float32)
        if trial % 3 == 0:  # ties
            probs = np.round(probs * 4).astype(np.float32) / 4
        out = ExpertOutput(torch.from_numpy(probs[None]), [int(i) for i in rng.permutation(n) - 1])
        for k in (1, 3, n, n + 2):
            assert out.result_dicts(k) == _batched(out, k), (trial, k)
    bad = ExpertOutput(torch.tensor([[0.2, float("nan"), 0.7]]), [0, 1, -1])
    assert bad.result_dicts(2) == _batched(bad, 2) and not bad.finite()
    assert ExpertOutput(torch.tensor([[0.2, 0.8]]), [0, -1]).finite()


def test_a_lone_small_batch_runs_on_the_event_loop_thread_and_a_burst_still_batches():
    """inline_max: a batch of <= inline_max images formed while nothing else is busy and the load is light
    runs on the loop's thread (no hand-off to the model thread); requests that arrive together still form
    one batch; a larger batch, the first small one after a large one, or one while another expert
    computes, runs in the model thread."""
    calls = []

    def model(images):
        calls.append((len(images), threading.current_thread().name))
        time.sleep(0.02)
        return ExpertOutput(torch.from_numpy(images[:, 0, 0, :2].astype(np.float32)), [7, -1])

    async def main():
        other_busy = False
        batcher = DynamicBatcher(model, executor=ThreadPoolExecutor(1, thread_name_prefix="model"), max_batch=64,
                                 inline_max=2, others_idle=lambda: not other_busy)
        one = np.full((1, 1, 1, 2), 5, dtype=np.uint8)
        lone, timings = await batcher.submit(one)
        assert float(lone.probs[0, 0]) == 5 and timings.batch_size == 1 and 15 < timings.compute_ms < 200
        await batcher.submit(np.ones((3, 1, 1, 2), dtype=np.uint8))  # more than inline_max
        burst = await asyncio.gather(*(batcher.submit(np.full((1, 1, 1, 2), i, dtype=np.uint8)) for i in range(6)))
        assert [float(o.probs[0, 0]) for o, _ in burst] == list(range(6))
        await batcher.submit(one)  # the first lone request after a large batch: in the model thread
        await batcher.submit(one)  # light load again: inline
        other_busy = True
        await batcher.submit(one)
        await batcher.stop()
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert [n for n, _ in calls] == [1, 3, 6, 1, 1, 1]  # the burst ran as one batch, not six inline ones
    where = ["loop" if name == loop_thread else "model" if name.startswith("model") else name for _, name in calls]
    assert where == ["loop", "model", "model", "model", "loop", "model"]


@pytest.mark.slow
def test_server_stopped_mid_run_loses_no_sample_and_offloading_resumes(tiny_system):
    gen = TorchGeneralist(tiny_system["generalist"])
    policy = generalist_policy(open_checkpoint(tiny_system["generalist"]), offload_rate=0.4, k=3)
    port = free_port()
    server = ServerProcess(tiny_system["experts"], port=port, threads=1)
    server.start()
    client = HttpExpertClient(server.url, Connection(timeout_s=2.0, retries=1), down_for_s=0.3)
    runner = EdgeRunner(gen, policy, client)
    batches, n, _, _ = open_input("split:test", input_spec=gen.input, class_names=gen.class_names,
                               data=gen.meta.dataset.config, batch_size=1, limit=300)
    phases = []

    def source():
        for i, batch in enumerate(batches):
            if i == 100:
                server.stop(kill=True)  # the server dies in the middle of the run
            if i == 200:
                server.start()  # and comes back on the same port
                time.sleep(0.4)  # the client's "down" period ends
            phases.append(i // 100)
            yield batch

    try:
        traces = list(runner.run(source()))
    finally:
        server.stop()
        client.close()
    assert len(traces) == n == 300 and all(t.pred >= 0 for t in traces)
    by_phase = [[t for t in traces[p * 100:(p + 1) * 100] if t.route is not Route.LOCAL] for p in range(3)]
    assert all(by_phase) and not any(t.degraded for t in by_phase[0])
    assert all(t.degraded and t.pred == t.local_pred and t.error for t in by_phase[1])
    assert not any(t.degraded for t in by_phase[2][1:])  # offloading resumed after the restart
    assert summarize(traces).degraded == len(by_phase[1]) + int(by_phase[2][0].degraded)


def test_client_fails_fast_on_a_dead_port_and_marks_the_server_down():
    client = HttpExpertClient(f"http://127.0.0.1:{free_port()}", Connection(timeout_s=1.0, retries=2), backoff_s=0.01,
                              down_for_s=5.0)
    t0 = time.perf_counter()
    with pytest.raises(ExpertUnavailable, match="unreachable after 3 attempts"):
        client.infer("0", np.zeros((1, 1, 28, 28), dtype=np.uint8))
    with pytest.raises(ExpertUnavailable, match="marked down"):
        client.infer("0", np.zeros((1, 1, 28, 28), dtype=np.uint8))
    assert time.perf_counter() - t0 < 3.0
    client.close()


def _echo_model(calls: list[int], poison: int | None = None, sleep_s: float = 0.0):
    """A stand-in for a model: records each batch's size, takes ``sleep_s``, answers each image's first two
    bytes as its probabilities, and raises on a batch holding an image whose first byte is ``poison``."""
    def model(images):
        calls.append(len(images))
        time.sleep(sleep_s)
        if poison is not None and (images[:, 0, 0, 0] == poison).any():
            raise RuntimeError("the model failed on this batch")
        return ExpertOutput(torch.from_numpy(images[:, 0, 0, :2].astype(np.float32)), [7, -1])
    return model


def test_dynamic_batcher_groups_concurrent_requests_and_slices_answers():
    calls = []
    model = _echo_model(calls, sleep_s=0.05)

    async def main():
        batcher = DynamicBatcher(model, executor=ThreadPoolExecutor(1), max_batch=64, max_wait_ms=0)
        reqs = [np.full((n, 1, 1, 2), i, dtype=np.uint8) for i, n in enumerate([1, 2, 3, 4, 5, 6])]
        first = asyncio.create_task(batcher.submit(reqs[0]))
        await asyncio.sleep(0.01)  # the model is busy with the first request: the rest queue up
        rest = await asyncio.gather(*(batcher.submit(r) for r in reqs[1:]))
        out = [await first, *rest]
        await batcher.stop()
        return reqs, out

    reqs, out = asyncio.run(main())
    assert calls == [1, 20]  # one lone request, then one batch of everything that queued behind it
    for req, (output, _) in zip(reqs, out, strict=True):
        assert len(output.probs) == len(req) and torch.all(output.probs == float(req[0, 0, 0, 0]))
    assert out[1][1].batch_size == 20 and out[1][1].queue_ms > 20


def test_dynamic_batcher_splits_an_oversized_request_and_serves_others_between_its_parts():
    """150 images at max_batch 64 run as 64 + 64 + 22; a request arriving meanwhile runs between the
    parts, in a batch of its own."""
    calls = []
    model = _echo_model(calls, sleep_s=0.05)

    async def main():
        batcher = DynamicBatcher(model, executor=ThreadPoolExecutor(1), max_batch=64, max_wait_ms=0)
        big = np.arange(150, dtype=np.uint8).reshape(150, 1, 1, 1).repeat(2, axis=3)
        small = np.full((1, 1, 1, 2), 200, dtype=np.uint8)
        first = asyncio.create_task(batcher.submit(big))
        await asyncio.sleep(0.01)  # arrives while the big request's first part computes
        small_out = await batcher.submit(small)
        big_out = await first
        await batcher.stop()
        return big, big_out, small_out

    big, (big_out, big_t), (small_out, small_t) = asyncio.run(main())
    assert calls == [64, 1, 64, 22]  # no batch over max_batch; the small request ran right after the first part
    assert torch.equal(big_out.probs[:, 0], torch.arange(150, dtype=torch.float32))  # parts back in order
    assert float(small_out.probs[0, 0]) == 200 and small_t.batch_size == 1
    assert big_t.batch_size == 64 and big_t.compute_ms > 3 * 45


def test_a_positive_max_wait_holds_the_batch_open_for_requests_that_follow():
    """--max-wait-ms > 0: a request that arrives 50 ms after the first (well inside a 2 s window) joins its
    batch; a lone request waits out the whole window before it runs (a lower bound: no speed assumed)."""
    calls = []

    async def main():
        batcher = DynamicBatcher(_echo_model(calls), executor=ThreadPoolExecutor(1), max_batch=8, max_wait_ms=2000)
        first = asyncio.create_task(batcher.submit(np.full((1, 1, 1, 2), 1, np.uint8)))
        await asyncio.sleep(0.05)
        second = await batcher.submit(np.full((1, 1, 1, 2), 2, np.uint8))
        joined = (await first, second)
        await batcher.stop()
        short = DynamicBatcher(_echo_model(calls), executor=ThreadPoolExecutor(1), max_batch=8, max_wait_ms=300)
        t0 = time.perf_counter()
        lone = await short.submit(np.full((1, 1, 1, 2), 3, np.uint8))
        waited = time.perf_counter() - t0
        await short.stop()
        return joined, lone, waited

    ((a, a_t), (b, b_t)), (lone, lone_t), waited = asyncio.run(main())
    assert calls == [2, 1] and a_t.batch_size == b_t.batch_size == 2
    assert float(a.probs[0, 0]) == 1 and float(b.probs[0, 0]) == 2  # each its own slice of the batch
    assert lone_t.batch_size == 1 and waited >= 0.3 and lone_t.queue_ms >= 299 and float(lone.probs[0, 0]) == 3


def test_a_model_that_raises_fails_every_request_of_its_batch_and_the_batcher_keeps_serving():
    """Three requests in one batch, one of them the image the model fails on: all three get the model's
    error (none hangs, none gets another's answer); a split request whose part fails runs no further part;
    the next request is answered as if nothing happened."""
    calls = []

    async def main():
        batcher = DynamicBatcher(_echo_model(calls, poison=255), executor=ThreadPoolExecutor(1), max_batch=8,
                                 max_wait_ms=0)
        queued = [asyncio.create_task(batcher.submit(np.full((1, 1, 1, 2), v, np.uint8))) for v in (1, 255, 2)]
        together = await asyncio.gather(*queued, return_exceptions=True)
        big = np.full((20, 1, 1, 2), 5, np.uint8)
        big[3] = 255  # in the first part of three
        split = await asyncio.gather(batcher.submit(big), return_exceptions=True)
        after = await batcher.submit(np.full((2, 1, 1, 2), 9, np.uint8))
        await batcher.stop()
        return together, split[0], after

    together, split, (after, after_t) = asyncio.run(main())
    assert calls == [3, 8, 2]  # one batch of three; the split request's first part only; then the next request
    assert all(isinstance(r, RuntimeError) and "failed on this batch" in str(r) for r in together)
    assert isinstance(split, RuntimeError)
    assert after_t.batch_size == 2 and after.probs[:, 0].tolist() == [9.0, 9.0]


def test_server_survives_a_request_flood_during_shutdown(tiny_system, tmp_path):
    """Four clients hammer the server; SIGTERM comes once they have answers. Every call returns, answered or
    told why not (unreachable or an HTTP status); each client meets the stop; the server's shutdown runs to
    its end (its log says so, with no traceback)."""
    log = tmp_path / "server.log"
    server = ServerProcess(tiny_system["experts"], threads=1, log_path=log, extra_args=["--log-level", "info"])
    url = server.start()
    images = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    answered, errors, lock = [], [], threading.Lock()
    warm, stopped = threading.Event(), threading.Event()

    def hammer():
        failed_after_stop = False
        deadline = time.monotonic() + 60
        with HttpExpertClient(url, Connection(timeout_s=2, retries=0), down_for_s=0) as c:
            while not failed_after_stop and time.monotonic() < deadline:
                try:
                    reply = c.infer("1", images)
                    with lock:
                        answered.append(len(reply.pred))
                        if len(answered) >= 8:
                            warm.set()
                except ExpertUnavailable as err:
                    with lock:
                        errors.append(str(err))
                    failed_after_stop = stopped.is_set()
        return failed_after_stop

    results = []
    threads = [threading.Thread(target=lambda: results.append(hammer())) for _ in range(4)]
    for t in threads:
        t.start()
    assert warm.wait(timeout=60), "no answers before the stop"
    stopped.set()
    server.stop()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)  # every client returned
    assert results == [True] * 4  # each met the stopped server and was told so, none hung
    assert len(answered) >= 8 and set(answered) == {1}
    assert errors and all("unreachable" in e or "HTTP" in e for e in errors), errors[:3]
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: the app's shutdown ran to its end
    assert server.proc.returncode == -signal.SIGTERM
    text = log.read_text()
    assert "stopped: every expert's queue answered or refused" in text and "Traceback" not in text, text[-2000:]


@pytest.mark.slow
def test_two_servers_share_the_experts_and_a_dead_one_degrades_only_its_own(tiny_system, tmp_path, caplog):
    """The experts split between two servers, one expert alone on the second: one edge run over both
    answers as one server would; with the second server killed, only the samples routed to its expert
    degrade. Which experts the trained router uses is the model's: the split is made from that."""
    from askexpert.runtime.session import EdgeSettings, edge_system, run_edge

    bundle = tiny_system["bundle"]
    system = edge_system(EdgeSettings(system=bundle, connection=Connection(server=None)))
    local = EdgeRunner(system.model, system.policy, InProcessExpertClient(ExpertPool(bundle)), system.experts)
    images, labels = _test_images(tiny_system, 600)
    routed = [t.expert for t in local.run([(images, labels)])]
    used = sorted({x for x in routed if x})
    assert len(used) >= 2, f"the router sends these images to {used} only: the scenario needs two experts"
    lone = used[-1]  # alone on the second server
    pick = sorted(set(range(150)) | {i for e in used for i in [j for j, x in enumerate(routed) if x == e][:10]})
    images, labels = images[pick], labels[pick]
    np.savez(tmp_path / "in.npz", images=images, labels=labels)
    expected = [t.pred for t in local.run([(images, labels)])]
    rest = [e.id for e in system.experts if e.id != lone]
    first = ServerProcess(bundle, threads=1, extra_args=["--experts", ",".join(rest)])
    second = ServerProcess(bundle, threads=1, extra_args=["--experts", lone, "--no-general"])
    with first as url_a, second as url_b:
        assert [e["id"] for e in httpx.get(f"{url_b}/v1/experts").json()] == [lone]
        settings = EdgeSettings(system=bundle, connection=Connection(server=[url_a, url_b]),
                                inputs=Inputs(sources=[str(tmp_path / "in.npz")]))
        both = run_edge(settings)
        assert both.summary.degraded == 0 and [t.pred for t in both.traces] == expected
        assert {t.expert for t in both.traces if t.expert} == set(used)
        second.stop(kill=True)
        with caplog.at_level("WARNING", logger="askexpert.edge"):
            half = run_edge(settings)
    degraded = {t.expert for t in half.traces if t.degraded}
    answered = {t.expert for t in half.traces if t.route.offloaded and not t.degraded}
    assert degraded == {lone} and answered == set(used) - {lone}
    assert all(t.pred == t.local_pred for t in half.traces if t.degraded)
    said = [r.getMessage() for r in caplog.records]  # once, naming the missing expert; no flapping
    assert len(said) == 1 and f"expert {lone} stopped answering" in said[0] and "no reachable server" in said[0], said


def test_the_batcher_refuses_arguments_that_would_stall_it():
    """max_batch 0 would requeue a request for ever: the batcher itself refuses it, naming the flag."""
    from askexpert.errors import ConfigError

    def model(images):
        return ExpertOutput(torch.ones(len(images), 2) / 2, [0, -1])

    with ThreadPoolExecutor(1) as pool:
        for bad in ({"max_batch": 0}, {"max_batch": -3}, {"max_batch": 2.5}, {"max_wait_ms": -1.0},
                    {"max_wait_ms": float("nan")}, {"inline_max": -1}):
            with pytest.raises(ConfigError, match="max_batch|max_wait_ms|inline_max") as err:
                DynamicBatcher(model, executor=pool, **bad)
            assert err.value.fix.startswith("pass ")
        assert DynamicBatcher(model, executor=pool, max_batch=1).max_batch == 1
