"""Benchmark: the expert server under load, on loopback, with a bearer token, as deployed.

    python benchmarks/server_under_load.py [--system BUNDLE] [--clients 16] [--requests 2000]

1. Mixed load: ``--clients`` client processes, each sending ``--requests`` requests in a closed loop,
   batch sizes drawn from 1, 2, 4, 8 and 32 images (half of them batch 1), to two experts at once
   (alternating). Every answer is checked against the expert's answer computed in this process for
   the same images: lost answers (no 200, or a wrong number of results) and mismatched ones (another
   class where the reference's top-2 margin is over 1e-3, i.e. not a floating-point tie) are counted.
   Goals: 0 lost, 0 mismatched; server RSS growth from the start of the load to its end < 10% (the
   start measured after a warm-up that sent every batch size to both experts once: the allocator's
   first growth is not a leak; the cold RSS is recorded too).
2. Small requests beside maximal ones: batch-1 requests to expert B, alone (the unloaded p99), then
   while another client sends maximal requests (``--max-images``, the server's per-request limit) to
   expert A; and, for the record, batch-1 requests to expert A itself during that load (they share
   A's batches). Goal: p99 of the small requests to B < 5x their unloaded p99.

Without --system the demo's bundle (runs/demo/system, trained by `askexpert demo` if missing) is served.
Writes results/<date>-<host>-load.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from askexpert.contract.protocol import MAX_IMAGES
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.settings import Connection, Security
from askexpert.serving.pool import ExpertPool
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.testbed.server import ServerProcess

BATCHES = (1, 1, 1, 1, 2, 4, 8, 32)  # drawn uniformly: half the requests are batch 1
POOL_IMAGES = 2048


def demo_bundle() -> Path:
    """The demo's bundle (runs/demo/system), made by the demo first where it is missing."""
    path = Path("runs/demo/system")
    if not (path / "system.json").is_file():
        from askexpert_lab.demo import run_demo

        run_demo(limit=10)
    return path


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def references(pool: ExpertPool, experts: list[str], images: np.ndarray) -> dict:
    """Each expert's answer for every image of the pool, and whether it is a clear one (margin > 1e-3)."""
    import torch

    out = {}
    for key in experts:
        probs = torch.cat([pool.infer(key, images[i:i + 256]).probs for i in range(0, len(images), 256)]).numpy()
        top2 = np.sort(probs, 1)[:, -2:]
        ids = np.asarray(pool.get(key).output_ids)
        out[key] = (ids[probs.argmax(1)], top2[:, 1] - top2[:, 0] > 1e-3)
    return out


def client_loop(args) -> dict:
    """One client process: ``n`` requests, each checked against the reference answers."""
    url, token, seed, n, experts, images, refs = args
    rng = np.random.default_rng(seed)
    lat = {b: [] for b in set(BATCHES)}
    lost = mismatched = checked = 0
    with HttpExpertClient(url, Connection(timeout_s=30, retries=0), Security(token=token), down_for_s=0) as client:
        for i in range(n):
            expert = experts[i % 2]
            size = int(rng.choice(BATCHES))
            start = int(rng.integers(0, len(images) - size))
            t0 = time.perf_counter()
            try:
                reply = client.infer(expert, images[start:start + size])
            except ExpertUnavailable:
                lost += 1
                continue
            lat[size].append((time.perf_counter() - t0) * 1000)
            if len(reply.pred) != size:
                lost += 1
                continue
            pred, clear = refs[expert]
            wrong = (reply.pred != pred[start:start + size]) & clear[start:start + size]
            mismatched += int(wrong.sum())
            checked += int(clear[start:start + size].sum())
    return {"lat": lat, "lost": lost, "mismatched": mismatched, "checked": checked}


def small_requests(url: str, token: str, expert: str, images: np.ndarray, n: int) -> list[float]:
    out = []
    with HttpExpertClient(url, Connection(timeout_s=60, retries=0), Security(token=token)) as client:
        for i in range(n):
            t0 = time.perf_counter()
            client.infer(expert, images[i % len(images):i % len(images) + 1])
            out.append((time.perf_counter() - t0) * 1000)
    return out


def beside_maximal(url: str, token: str, small_expert: str, big_expert: str, images: np.ndarray, n: int,
                   max_images: int) -> tuple[list[float], int]:
    """Batch-1 latencies to ``small_expert`` while a client keeps sending maximal requests to ``big_expert``."""
    big = np.resize(images, (max_images, *images.shape[1:]))
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        with HttpExpertClient(url, Connection(timeout_s=300, retries=0), Security(token=token)) as client:
            while not stop.is_set():
                client.infer(big_expert, big)
                sent[0] += 1

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    time.sleep(0.5)  # the first maximal request is in the model
    try:
        lat = small_requests(url, token, small_expert, images, n)
    finally:
        stop.set()
        thread.join()
    return lat, sent[0]


def quarters(samples: list[float], end: float) -> list[float]:
    """RSS at 25, 50, 75 and 100% of the load."""
    if not samples:
        return [end] * 4
    return [samples[min(len(samples) - 1, int(len(samples) * q))] for q in (0.25, 0.5, 0.75)] + [end]


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", type=Path, help="a bundle (default: the demo's)")
    ap.add_argument("--experts", default="0,1", help="the two experts to load, A,B")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000, help="requests per client")
    ap.add_argument("--max-images", type=int, default=MAX_IMAGES, help="images in a maximal request")
    ap.add_argument("--small", type=int, default=300, help="batch-1 requests in each latency measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--results", type=Path, default=Path(__file__).parents[1] / "results")
    args = ap.parse_args()
    args.system = args.system or demo_bundle()
    experts = args.experts.split(",")
    info = machine_info()
    rng = np.random.default_rng(0)
    pool = ExpertPool(args.system, include_general=False)
    images = rng.integers(0, 256, (POOL_IMAGES, *pool.get(experts[0]).info().input_shape), dtype=np.uint8)
    refs = references(pool, experts, images)
    del pool
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        server = ServerProcess(args.system, threads=args.threads, token=token, log_path=Path(tmp) / "server.log",
                               extra_args=["--no-general", "--token-file", str(token_file),
                                           "--max-request-images", str(args.max_images)])
        with server as url:
            pid = server.proc.pid
            rss_cold = rss_mb(pid)
            with HttpExpertClient(url, Connection(timeout_s=60), Security(token=token)) as warm:
                for size in range(1, 65):  # every batch size up to --max-batch (merged requests reach them all)
                    for expert in experts:
                        warm.infer(expert, images[:size])
            small_requests(url, token, experts[1], images, 200)
            rss_start = rss_mb(pid)
            print(f"server up ({rss_start:.0f} MB); {args.clients} clients x {args.requests} requests ...", flush=True)
            t0 = time.perf_counter()
            samples: list[float] = []  # the server's RSS every second of the load: a leak climbs, warm-up levels
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(1.0):
                    samples.append(rss_mb(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            jobs = [(url, token, seed, args.requests, experts, images, refs) for seed in range(args.clients)]
            with mp.get_context("spawn").Pool(args.clients) as workers:
                parts = workers.map(client_loop, jobs)
            wall = time.perf_counter() - t0
            sampling.set()
            sampler.join()
            rss_end = rss_mb(pid)
            print(f"mixed load done in {wall:.0f} s; small requests beside maximal ones ...", flush=True)
            unloaded = small_requests(url, token, experts[1], images, args.small)
            other, big_sent = beside_maximal(url, token, experts[1], experts[0], images, args.small, args.max_images)
            same, big_sent_same = beside_maximal(url, token, experts[0], experts[0], images, max(args.small // 5, 30),
                                                 args.max_images)
            rss_after = rss_mb(pid)
            server_log = (Path(tmp) / "server.log").read_text()
    lat_all = [x for p in parts for b in p["lat"] for x in p["lat"][b]]
    by_batch = {b: [x for p in parts for x in p["lat"][b]] for b in sorted(set(BATCHES))}
    requests = args.clients * args.requests
    result = {
        "machine": info, "system": str(args.system), "experts": experts, "clients": args.clients,
        "requests": requests, "wall_s": wall, "requests_per_s": requests / wall,
        "images_per_s": sum(b * len(v) for b, v in by_batch.items()) / wall,
        "lost": sum(p["lost"] for p in parts), "mismatched": sum(p["mismatched"] for p in parts),
        "checked_answers": sum(p["checked"] for p in parts),
        "latency_ms": {"p50": pct(lat_all, 50), "p99": pct(lat_all, 99)},
        "latency_ms_by_batch": {str(b): {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)}
                                for b, v in by_batch.items()},
        "rss_mb": {"cold": rss_cold, "start": rss_start, "end": rss_end, "growth_pct": 100 * (rss_end / rss_start - 1),
                   "after_maximal": rss_after, "during_load_by_quarter": quarters(samples, rss_end)},
        "small_unloaded_ms": {"p50": pct(unloaded, 50), "p99": pct(unloaded, 99)},
        "small_beside_maximal_other_expert_ms": {"p50": pct(other, 50), "p99": pct(other, 99),
                                                 "maximal_requests": big_sent},
        "small_beside_maximal_same_expert_ms": {"p50": pct(same, 50), "p99": pct(same, 99),
                                                "maximal_requests": big_sent_same},
        "server_log_errors": sum("ERROR" in line or "Traceback" in line for line in server_log.splitlines()),
        "command": "python benchmarks/server_under_load.py " + " ".join(sys.argv[1:]),
    }
    result["small_p99_ratio_other_expert"] = result["small_beside_maximal_other_expert_ms"]["p99"] / \
        result["small_unloaded_ms"]["p99"]
    result["small_p99_ratio_same_expert"] = result["small_beside_maximal_same_expert_ms"]["p99"] / \
        result["small_unloaded_ms"]["p99"]
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{info['date']}-{info['host']}-load.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nmachine: {describe(info)}; server: {args.threads} torch thread(s) an expert, own process; "
          f"experts {experts[0]} and {experts[1]} of {args.system}; results: {out}")
    print(f"\n| mixed load: {args.clients} clients x {args.requests} requests | value | goal |\n|---|---|---|")
    print(f"| lost answers | {result['lost']} of {requests} requests | 0 |")
    print(f"| mismatched answers | {result['mismatched']} of {result['checked_answers']} clear ones | 0 |")
    print(f"| latency p50 / p99, all requests | {result['latency_ms']['p50']:.1f} / {result['latency_ms']['p99']:.1f} "
          "ms | |")
    for b, row in result["latency_ms_by_batch"].items():
        print(f"| latency p50 / p99, batch {b} ({row['n']} requests) | {row['p50']:.1f} / {row['p99']:.1f} ms | |")
    print(f"| throughput | {result['requests_per_s']:.0f} requests/s, {result['images_per_s']:.0f} images/s | |")
    r = result["rss_mb"]
    print(f"| server RSS start / end of the load | {r['start']:.0f} / {r['end']:.0f} MB ({r['growth_pct']:+.1f}%) "
          f"| < +10% |\n| server RSS cold (before the warm-up) | {r['cold']:.0f} MB | |")
    print(f"| server RSS at 25 / 50 / 75 / 100% of the load | "
          f"{' / '.join(f'{x:.0f}' for x in r['during_load_by_quarter'])} MB | flat |")
    print(f"| server RSS after the maximal requests | {r['after_maximal']:.0f} MB | |")
    print(f"| errors in the server log | {result['server_log_errors']} | 0 |")
    u, o, s = (result["small_unloaded_ms"], result["small_beside_maximal_other_expert_ms"],
               result["small_beside_maximal_same_expert_ms"])
    print("\n| batch-1 requests | p50 | p99 | p99 / unloaded p99 | goal |\n|---|---|---|---|---|")
    print(f"| to B, unloaded | {u['p50']:.2f} ms | {u['p99']:.2f} ms | 1 | |")
    print(f"| to B, while {args.max_images}-image requests go to A ({o['maximal_requests']} sent) | "
          f"{o['p50']:.2f} ms | {o['p99']:.2f} ms | {result['small_p99_ratio_other_expert']:.2f}x | < 5x |")
    print(f"| to A itself, during the same load ({s['maximal_requests']} sent) | {s['p50']:.2f} ms | "
          f"{s['p99']:.2f} ms | {result['small_p99_ratio_same_expert']:.2f}x | (shares A's batches) |")


if __name__ == "__main__":
    main()
