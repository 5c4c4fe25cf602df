"""Benchmark: the collaborative runtime on this machine, each comparison measured side by side.

    python benchmarks/serving.py [--experts RUN_DIR] [--generalist RUN_DIR]

1. Loopback overhead of one offloaded request (end to end at the client minus the expert's compute
   time), batch 1, one client: p50 and p95, beside two floors measured in the same run with the same
   client: a bare uvicorn + Starlette endpoint reading the same body and answering a small JSON, and
   the same endpoint running the same expert's forward pass inline (what any server around this
   model pays, caches included).                      Goal: overhead p50 <= 1.5x the bare floor.
2. Server throughput with 16 concurrent clients (batch-1 requests in closed loops on bare asyncio
   streams, a light load generator; httpx clients as well, for comparison) against the same expert's
   raw throughput in a plain loop at the server's observed mean batch size. Goal: >= 0.8x.
3. The edge generalist at batch 1: torch vs ONNX Runtime, one thread each.
4. On a GPU: the expert at batch 1, 16 and 64, eager half precision vs CUDA-graph replay (latency of
   the whole call: upload, normalise, forward, softmax, download), and the GPU's NVML energy an image
   at batch 1 vs 64 (everything the card draws over the window, static power included).

The server runs as its own process with one torch thread; the clients run here. Without --experts
the demo's models (runs/demo, trained by `askexpert demo` if missing) are used.
Writes results/<date>-<host>-serving.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from askexpert.contract.protocol import InferResponse, encode_images
from askexpert.models.onnx_export import export_onnx
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.edge_models import TorchGeneralist
from askexpert.runtime.onnx_model import OnnxGeneralist
from askexpert.runtime.settings import Connection
from askexpert.serving.pool import ExpertPool
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.testbed.server import ServerProcess


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def overhead(url: str, images: np.ndarray, expert: str, n: int) -> dict:
    """Sequential batch-1 requests: client end-to-end time minus the server's compute time."""
    over, e2e, compute = [], [], []
    with HttpExpertClient(url, Connection(timeout_s=10)) as client:
        for _ in range(50):
            client.infer(expert, images[:1])
        for i in range(n):
            t0 = time.perf_counter()
            reply = client.infer(expert, images[i % len(images):i % len(images) + 1])
            total = (time.perf_counter() - t0) * 1000
            e2e.append(total)
            compute.append(reply.compute_ms)
            over.append(total - reply.compute_ms)
    return {"requests": n, "overhead_ms_p50": percentile(over, 50), "overhead_ms_p95": percentile(over, 95),
            "end_to_end_ms_p50": percentile(e2e, 50), "compute_ms_p50": percentile(compute, 50)}


FLOOR_APP = r"""
import json, sys, time
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

port, variant, source, expert = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
wait_s = float(sys.argv[5]) / 1000 if len(sys.argv) > 5 else 0.0  # sleep / spin: this long, as the model takes
if variant == "model":
    import torch
    torch.set_num_threads(1)
    from askexpert.serving.pool import ExpertPool
    pool = ExpertPool(source, include_general=False)

async def infer(request):
    body = await request.body()
    ms = 0.0
    if variant == "model":
        images = np.frombuffer(body, dtype=np.uint8).reshape(1, *pool.get(expert).info().input_shape)
        t0 = time.perf_counter()
        pool.infer(expert, images)
        ms = (time.perf_counter() - t0) * 1000
    elif variant == "sleep":  # the server idles as long as the model computes (the client waits as long)
        t0 = time.perf_counter()
        time.sleep(wait_s)
        ms = (time.perf_counter() - t0) * 1000
    elif variant == "spin":  # the server is busy as long, in a loop that touches no memory
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < wait_s:
            pass
        ms = (time.perf_counter() - t0) * 1000
    return Response(json.dumps({"n": len(body), "compute_ms": ms}), media_type="application/json")

app = Starlette(routes=[Route("/v1/experts/{expert_id}/infer", infer, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def floor(source: Path, expert: str, images: np.ndarray, n: int, variant: str, wait_ms: float = 0.0) -> dict:
    """The same batch-1 loop against a bare uvicorn + Starlette endpoint (``bare``: reads the body,
    answers a small JSON; ``model``: also runs the expert's forward inline; ``sleep`` / ``spin``: idles /
    busy-loops ``wait_ms`` instead): time minus its compute (or wait)."""
    import subprocess

    from askexpert_lab.testbed.server import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port), variant, str(source), expert, str(wait_ms)],
                            env=env)
    body, headers = encode_images(images[:1])
    url = httpx.URL(f"http://127.0.0.1:{port}/v1/experts/{expert}/infer?topk=3")
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.request("POST", url, content=body, headers=headers)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for _ in range(50):
                client.request("POST", url, content=body, headers=headers)
            over = []
            for i in range(n):
                b, h = encode_images(images[i % len(images):i % len(images) + 1])
                t0 = time.perf_counter()
                r = client.request("POST", url, content=b, headers=h)
                total = (time.perf_counter() - t0) * 1000
                over.append(total - json.loads(r.content)["compute_ms"])
    finally:
        proc.terminate()
        proc.wait()
    return {"variant": variant, "requests": n, "overhead_ms_p50": percentile(over, 50),
            "overhead_ms_p95": percentile(over, 95)}


def _process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _closed_loop_raw(url: str, images: np.ndarray, expert: str, clients: int, seconds: float,
                           server_pid: int | None = None) -> dict:
    """Closed-loop clients on bare asyncio streams speaking HTTP/1.1 keep-alive: the same requests as
    httpx sends, for a fraction of its CPU, so that on a 2-core host the load generator leaves the
    server its core (the server's throughput is measured, not the load generator's)."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    body, headers = encode_images(images[:1])
    head = (f"POST /v1/experts/{expert}/infer?topk=3 HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n").encode()
    request = head + body
    done, batches = 0, []

    async def one(stop: float, record: bool) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop:
                writer.write(request)
                await writer.drain()
                status_and_headers = await reader.readuntil(b"\r\n\r\n")
                if not status_and_headers.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(status_and_headers.decode(errors="replace")[:200])
                length = next(int(line.split(b":", 1)[1]) for line in status_and_headers.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                payload = await reader.readexactly(length)
                if record:
                    batches.append(json.loads(payload)["timings"]["batch_size"])
                    done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one(time.perf_counter() + 0.5, False) for _ in range(clients)))  # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    server0 = _process_cpu_s(server_pid) if server_pid else None
    await asyncio.gather(*(one(t0 + seconds, True) for _ in range(clients)))
    elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server_cpu = _process_cpu_s(server_pid) - server0 if server0 is not None else None
    return {"clients": clients, "images_per_s": done / elapsed, "mean_batch": statistics.mean(batches),
            "requests": done, "client_cores": client_cpu / elapsed, "load_generator": "asyncio streams",
            "server_cores": None if server_cpu is None else server_cpu / elapsed}


async def _closed_loop(url: str, images: np.ndarray, expert: str, clients: int, seconds: float,
                       server_pid: int | None = None) -> dict:
    body, headers = encode_images(images[:1])
    done, batches = 0, []
    stop = time.perf_counter() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            r = await client.post(f"/v1/experts/{expert}/infer", content=body, headers=headers)
            r.raise_for_status()
            batches.append(InferResponse.model_validate_json(r.content).timings.batch_size)
            done += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for _ in range(20):  # warm-up
            await client.post(f"/v1/experts/{expert}/infer", content=body, headers=headers)
        t0, cpu0 = time.perf_counter(), time.process_time()
        server0 = _process_cpu_s(server_pid) if server_pid else None
        await asyncio.gather(*(one(client) for _ in range(clients)))
        elapsed, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
        server_cpu = _process_cpu_s(server_pid) - server0 if server0 is not None else None
    # where the two cores went: the load generator's share and the server's (in cores busy)
    return {"clients": clients, "images_per_s": done / elapsed, "mean_batch": statistics.mean(batches),
            "requests": done, "client_cores": client_cpu / elapsed,
            "server_cores": None if server_cpu is None else server_cpu / elapsed}


def raw_throughput(pool: ExpertPool, expert: str, images: np.ndarray, batch: int, seconds: float) -> float:
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    for _ in range(5):
        pool.infer(expert, x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pool.infer(expert, x)
        n += batch
    return n / (time.perf_counter() - t0)


def edge_latency(generalist: Path, images: np.ndarray, n: int) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        export = export_onnx(generalist, Path(tmp) / "g.onnx")
        models = {"torch": TorchGeneralist(generalist, threads=1), "onnx": OnnxGeneralist(Path(tmp) / "g.onnx",
                                                                                        threads=1)}
        out = {"onnx_max_abs_diff": export["max_abs_diff"]}
        for _ in range(2):  # interleaved rounds, so both see the same machine state
            for name, model in models.items():
                for i in range(30):
                    model.logits(images[i:i + 1])
                times = []
                for i in range(n):
                    t0 = time.perf_counter()
                    model.logits(images[i % len(images):i % len(images) + 1])
                    times.append((time.perf_counter() - t0) * 1000)
                out.setdefault(name, []).extend(times)
    return {"torch_ms_p50": percentile(out["torch"], 50), "onnx_ms_p50": percentile(out["onnx"], 50),
            "torch_ms_p95": percentile(out["torch"], 95), "onnx_ms_p95": percentile(out["onnx"], 95),
            "speedup_p50": percentile(out["torch"], 50) / percentile(out["onnx"], 50),
            "onnx_max_abs_diff": out["onnx_max_abs_diff"]}


def gpu_section(experts: Path, expert_id: str, images: np.ndarray, n: int, seconds: float) -> dict:
    """Eager fp16 vs CUDA graphs at a few batch sizes, interleaved; NVML energy an image at batch 1 vs 64."""
    from askexpert.costs.meters import MeterUnavailable, NvmlMeter

    pools = {"eager": ExpertPool(experts, include_general=False, cuda_graphs=False, trace=False),
             "cuda_graph": ExpertPool(experts, include_general=False, cuda_graphs=True, trace=False)}
    out: dict = {"device": torch.cuda.get_device_name(0), "latency_ms_p50": {}}
    for batch in (1, 16, 64):
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        times: dict[str, list[float]] = {name: [] for name in pools}
        for _ in range(3):  # interleaved rounds
            for name, pool in pools.items():
                for _ in range(20):
                    pool.infer(expert_id, x)
                for _ in range(n // 3):
                    t0 = time.perf_counter()
                    pool.infer(expert_id, x)  # ends with the answers on the CPU: a full synchronisation
                    times[name].append((time.perf_counter() - t0) * 1000)
        out["latency_ms_p50"][batch] = {name: percentile(t, 50) for name, t in times.items()}
    try:
        meter = NvmlMeter()
    except MeterUnavailable as err:
        out["energy"] = f"not measured: {err}"
        return out
    out["energy_source"] = meter.source
    out["energy_mj_per_image"] = {}
    for batch in (1, 64):
        meter.start()
        done = raw_throughput(pools["cuda_graph"], expert_id, images, batch, seconds)
        reading = meter.stop()
        images_done = done * reading.seconds
        out["energy_mj_per_image"][batch] = {"mj": 1000 * reading.joules / images_done, "watts": reading.watts,
                                             "images_per_s": done}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=Path)
    ap.add_argument("--generalist", type=Path)
    ap.add_argument("--expert-id", default="0")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="side-by-side repeats of the server measurements")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    if args.experts is None or args.generalist is None:
        from askexpert_lab.demo import run_demo

        demo = run_demo(limit=10)
        args.experts = args.experts or demo.models.experts["progressive"]
        args.generalist = args.generalist or demo.models.generalist
    torch.set_num_threads(1)
    info = machine_info()
    gen = TorchGeneralist(args.generalist)
    images = np.random.default_rng(0).integers(0, 256, (256, gen.input.channels, gen.input.size, gen.input.size),
                                                   dtype=np.uint8)
    pool = ExpertPool(args.experts, include_general=False)
    model_name = pool.get(args.expert_id).spec.name
    repeats = []
    for r in range(args.repeats):  # everything side by side, repeat after repeat
        server = ServerProcess(args.experts, threads=1, extra_args=["--no-general"])
        with server as url:
            over = overhead(url, images, args.expert_id, args.requests)
            loaded = asyncio.run(_closed_loop_raw(url, images, args.expert_id, 16, args.seconds, server.proc.pid))
            loaded_httpx = asyncio.run(_closed_loop(url, images, args.expert_id, 16, args.seconds / 2,
                                                    server.proc.pid))
            single = asyncio.run(_closed_loop(url, images, args.expert_id, 1, args.seconds / 2, server.proc.pid))
        bare = floor(args.experts, args.expert_id, images, args.requests, "bare")
        matched = floor(args.experts, args.expert_id, images, args.requests, "model")
        batch = max(1, round(loaded["mean_batch"]))
        raw = raw_throughput(pool, args.expert_id, images, batch, args.seconds)
        raw1 = raw_throughput(pool, args.expert_id, images, 1, args.seconds / 2)
        repeats.append({"overhead": over, "floor_bare": bare, "floor_with_model": matched,
                        "overhead_vs_bare_floor": over["overhead_ms_p50"] / bare["overhead_ms_p50"],
                        "overhead_vs_model_floor": over["overhead_ms_p50"] / matched["overhead_ms_p50"],
                        "server_16_clients": loaded, "server_16_httpx_clients": loaded_httpx,
                        "server_1_client": single, "raw_batch": batch,
                        "raw_images_per_s": raw, "raw_batch1_images_per_s": raw1,
                        "throughput_ratio": loaded["images_per_s"] / raw})
        print(f"repeat {r + 1}: overhead {over['overhead_ms_p50']:.2f} ms, bare floor {bare['overhead_ms_p50']:.2f} ms "
              f"({repeats[-1]['overhead_vs_bare_floor']:.2f}x), floor with the model "
              f"{matched['overhead_ms_p50']:.2f} ms ({repeats[-1]['overhead_vs_model_floor']:.2f}x); 16 clients "
              f"{loaded['images_per_s']:.0f} img/s (server {loaded['server_cores']:.2f} cores, load generator "
              f"{loaded['client_cores']:.2f}) vs plain loop {raw:.0f} at batch {batch} "
              f"({repeats[-1]['throughput_ratio']:.2f}x); with 16 httpx clients {loaded_httpx['images_per_s']:.0f} "
              f"img/s (load generator {loaded_httpx['client_cores']:.2f} cores)", flush=True)
    last = repeats[-1]
    over, loaded, single = last["overhead"], last["server_16_clients"], last["server_1_client"]
    batch = last["raw_batch"]
    raw, raw1 = last["raw_images_per_s"], last["raw_batch1_images_per_s"]
    edge = edge_latency(args.generalist, images, args.requests)
    gpu = gpu_section(args.experts, args.expert_id, images, args.requests, args.seconds / 2) \
        if torch.cuda.is_available() else None
    medians = {key: statistics.median(r[key] for r in repeats)
               for key in ("overhead_vs_bare_floor", "overhead_vs_model_floor", "throughput_ratio")}
    result = {"gpu": gpu, "machine": info, "experts": str(args.experts), "expert_model": model_name,
              "generalist": str(args.generalist), "repeats": repeats, "medians": medians,
              "overhead": over, "server_16_clients": loaded,
              "server_1_client": single, "raw_batch": batch, "raw_images_per_s": raw, "raw_batch1_images_per_s": raw1,
              "throughput_ratio": loaded["images_per_s"] / raw, "edge": edge,
              "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:])}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-serving.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"machine: {describe(info)}; server: 1 torch thread, own process; expert {args.expert_id} ({model_name}); "
          f"results: {out}")
    print("\n| repeat | overhead p50 | bare floor p50 | ratio | floor with the model p50 | ratio | "
          "16 clients / plain loop |\n|---|---|---|---|---|---|---|")
    for i, r in enumerate(repeats, 1):
        print(f"| {i} | {r['overhead']['overhead_ms_p50']:.2f} ms | {r['floor_bare']['overhead_ms_p50']:.2f} ms | "
              f"{r['overhead_vs_bare_floor']:.2f}x | {r['floor_with_model']['overhead_ms_p50']:.2f} ms | "
              f"{r['overhead_vs_model_floor']:.2f}x | {r['throughput_ratio']:.2f}x |")
    print(f"| median | | | {medians['overhead_vs_bare_floor']:.2f}x | | {medians['overhead_vs_model_floor']:.2f}x | "
          f"{medians['throughput_ratio']:.2f}x |")
    print("\n| loopback, batch 1, one client (last repeat) | p50 | p95 |\n|---|---|---|")
    print(f"| overhead (end to end - expert compute) | {over['overhead_ms_p50']:.2f} ms | "
          f"{over['overhead_ms_p95']:.2f} ms |")
    print(f"| end to end | {over['end_to_end_ms_p50']:.2f} ms | - |")
    print(f"| expert compute | {over['compute_ms_p50']:.2f} ms | - |")
    print("\n| throughput | images/s | mean batch |\n|---|---|---|")
    print(f"| server, 16 concurrent clients | {loaded['images_per_s']:.0f} | {loaded['mean_batch']:.1f} |")
    if loaded["server_cores"] is not None:
        print(f"| (cores busy during it: server {loaded['server_cores']:.2f}, "
              f"clients {loaded['client_cores']:.2f}) | | |")
    print(f"| server, 1 client | {single['images_per_s']:.0f} | {single['mean_batch']:.1f} |")
    print(f"| plain loop, batch {batch} | {raw:.0f} | {batch} |")
    print(f"| plain loop, batch 1 | {raw1:.0f} | 1 |")
    print(f"| ratio server (16 clients) / plain loop | {result['throughput_ratio']:.2f}x | |")
    print("\n| edge generalist, batch 1, 1 thread | p50 | p95 |\n|---|---|---|")
    print(f"| torch | {edge['torch_ms_p50']:.2f} ms | {edge['torch_ms_p95']:.2f} ms |")
    print(f"| ONNX Runtime | {edge['onnx_ms_p50']:.2f} ms | {edge['onnx_ms_p95']:.2f} ms |")
    print(f"| speed-up (p50) | {edge['speedup_p50']:.2f}x | |")
    if gpu:
        print(f"\n| {gpu['device']}, expert call p50 | eager fp16 | CUDA graph | speed-up |\n|---|---|---|---|")
        for batch, row in gpu["latency_ms_p50"].items():
            print(f"| batch {batch} | {row['eager']:.3f} ms | {row['cuda_graph']:.3f} ms | "
                  f"{row['eager'] / row['cuda_graph']:.1f}x |")
        for batch, row in gpu.get("energy_mj_per_image", {}).items():
            print(f"| NVML energy, batch {batch} (CUDA graph) | {row['mj']:.2f} mJ an image | {row['watts']:.0f} W | "
                  f"{row['images_per_s']:.0f} img/s |")


if __name__ == "__main__":
    main()
