"""Benchmark: routing cost per sample on the CPU (the policy alone: calibration, confidence, Top-k
expert choice and the final answer), batched and one sample at a time, for the paper's confidence rule
(max-prob) and the learned deferral rule (``askexpert.routing.deferral``, its score in place of the
confidence; fitted here on random outcomes: its cost does not depend on its weights).

    python benchmarks/router_latency.py
    python benchmarks/router_latency.py --device rpi4   # also batch 1 on the emulated edge device

Goal: < 50 microseconds a sample. With ``--device``, batch 1 is also timed as a mean over 20,000 calls
in this process and on the emulated device (``askexpert_lab.testbed.placement``: one core under the CPU
quota that makes the device's reference model run at its published speed). Prints a Markdown table and writes
results/<date>-<host>-router-latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from askexpert.routing import OTHER, Router, RoutingPolicy, finalize, membership_matrix
from askexpert.routing.deferral import fit_deferral
from askexpert_lab.bench.machine import describe, machine_info
from askexpert_lab.bench.router_cost import route_cost_us

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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", help="also time batch 1 on this emulated edge device (e.g. rpi4)")
    args = ap.parse_args()
    info = machine_info()
    rows, one_image = [], []
    g = np.random.default_rng(0)
    for classes, experts, k in CASES:
        subsets = [list(range(e, classes, experts)) for e in range(experts)]
        membership = membership_matrix(subsets, classes)
        plain = RoutingPolicy(tau=0.7, k=k, temperature=1.3)
        sample = (g.standard_normal((2000, classes)) * 3).astype(np.float32)
        rule = fit_deferral(Router(plain, membership).deferral_inputs(sample), g.integers(-1, 2, len(sample)),
                            num_experts=experts, num_classes=classes, k=k, l2=0.01)
        for rule_name, batch in [(r, b) for r in ("max-prob", "learned") for b in (1, 64, 4096)]:
            policy = plain if rule_name == "max-prob" else RoutingPolicy(
                tau=0.5, k=k, temperature=1.3, confidence="learned", deferral=rule)
            router = Router(policy, membership)
            logits = (g.standard_normal((batch, classes)) * 3).astype(np.float32)  # what ONNX Runtime returns
            pred = np.maximum(g.integers(-1, classes, batch), OTHER)
            conf = g.random(batch).astype(np.float32)

            def step(logits=logits, pred=pred, conf=conf, policy=policy, router=router):
                d = router.route(logits)
                finalize(d, pred, conf, policy)

            for _ in range(20):
                step()
            repeats = 2000 if batch == 1 else 200 if batch == 64 else 20
            rows.append({"classes": classes, "experts": experts, "k": k, "rule": rule_name, "batch": batch,
                         "us_per_sample": per_sample_us(step, batch, repeats)})
            if batch == 1:
                one_image.append(({"classes": classes, "rule": rule_name}, router,
                                  (g.standard_normal((256, classes)) * 3).astype(np.float32)))
    device = None
    if args.device:
        from askexpert_lab.testbed.placement import EmulatedEdge

        with EmulatedEdge(args.device) as edge:
            device = edge.placement.describe()
            for row, router, logits in one_image:
                edge.recalibrate(f"{row['classes']} classes, {row['rule']}")
                row["host_mean_us"] = route_cost_us(router, logits)
                row["device_mean_us"] = edge.call(route_cost_us, router=router, logits=logits)
    results = Path(__file__).parents[1] / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{info['date']}-{info['host']}-router-latency.json"
    out.write_text(json.dumps({"machine": info, "rows": rows, "device": device,
                               "one_image_on_device": [row for row, _, _ in one_image if "device_mean_us" in row],
                               "command": "python benchmarks/router_latency.py"
                               + (f" --device {args.device}" if args.device else "")}, indent=1))
    print(f"machine: {describe(info)} (router on 1 thread); results: {out}")
    print("| classes | experts | k | rule | batch | median us / sample |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['classes']} | {r['experts']} | {r['k']} | {r['rule']} | {r['batch']} | {r['us_per_sample']:.2f} |")
    if device:
        print(f"\nbatch 1, mean over 20,000 calls; edge: {device}")
        print("| classes | rule | this process, us | emulated device, us |\n|---|---|---|---|")
        for row, _, _ in one_image:
            print(f"| {row['classes']} | {row['rule']} | {row['host_mean_us']:.1f} | {row['device_mean_us']:.1f} |")


if __name__ == "__main__":
    main()
