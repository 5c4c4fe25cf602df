"""Benchmark: routing cost per sample on the CPU (the policy alone: calibration, confidence, Top-k
expert choice and the final answer), batched and one sample at a time.

    python benchmarks/router_latency.py

Goal: < 50 microseconds a sample. Prints a Markdown table and writes
benchmarks/results/<date>-<host>-router-latency.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from askexpert.bench.machine import describe, machine_info
from askexpert.routing import OTHER, Router, RoutingPolicy, finalize, membership_matrix

CASES = [  # (classes, experts, k)
    (10, 3, 3),
    (100, 5, 5),
]


def per_sample_us(fn, samples: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / samples * 1e6


def main() -> None:
    info = machine_info()
    rows = []
    g = np.random.default_rng(0)
    for classes, experts, k in CASES:
        subsets = [list(range(e, classes, experts)) for e in range(experts)]
        membership = membership_matrix(subsets, classes)
        policy = RoutingPolicy(tau=0.7, k=k, temperature=1.3)
        router = Router(policy, membership)
        for batch in (1, 64, 4096):
            logits = (g.standard_normal((batch, classes)) * 3).astype(np.float32)  # what ONNX Runtime returns
            pred = np.maximum(g.integers(-1, classes, batch), OTHER)
            conf = g.random(batch).astype(np.float32)

            def step(logits=logits, pred=pred, conf=conf, policy=policy, router=router):
                d = router.route(logits)
                finalize(d, pred, conf, policy)

            for _ in range(20):
                step()
            repeats = 2000 if batch == 1 else 200 if batch == 64 else 20
            rows.append({"classes": classes, "experts": experts, "k": k, "batch": batch,
                         "us_per_sample": per_sample_us(step, batch, repeats)})
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{info['date']}-{info['host']}-router-latency.json"
    out.write_text(json.dumps({"machine": info, "rows": rows,
                               "command": "python benchmarks/router_latency.py"}, indent=1))
    print(f"machine: {describe(info)} (router on 1 thread); results: {out}")
    print("| classes | experts | k | batch | median us / sample |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['classes']} | {r['experts']} | {r['k']} | {r['batch']} | {r['us_per_sample']:.2f} |")


if __name__ == "__main__":
    main()
