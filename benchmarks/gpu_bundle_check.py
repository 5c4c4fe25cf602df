"""GPU confirmation of the bundle: the experts served on CUDA (fp16, CUDA graphs, calibrated
temperatures) answer the torch-free edge as the offline (fp32, CPU) evaluation says they should.

    # on the build machine: a bundle, the test images and the offline answers, into an ignored folder
    python benchmarks/gpu_bundle_check.py prepare --generalist RUN --experts RUN --out .gpu-bundle
    # on the GPU machine (the folder travels with the repository)
    python benchmarks/gpu_bundle_check.py check --dir .gpu-bundle --out $OUT

``check`` serves the bundle with ``askexpert serve --device cuda``, streams every test image through
the bundle's edge runner (ONNX Runtime on the CPU, one image at a time, real HTTP on loopback) under
both fallback rules, and reports how many answers equal the offline ones, the latency breakdown and,
where NVML exists, the GPU's measured energy over the stream. Writes check.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

RULES = ("other", "other-or-less-confident")


def prepare(args: argparse.Namespace) -> None:
    from askexpert.config import DataConfig
    from askexpert.data import load_dataset
    from askexpert.models import open_checkpoint
    from askexpert.models.runs import open_expert_run
    from askexpert.routing import RoutingPolicy, finalize, membership_matrix, route
    from askexpert.system.build import build_system
    from askexpert.system.calibrate import load_experts, outputs_of

    bundle = build_system(args.generalist, args.experts, args.out / "system", overwrite=True)
    m = bundle.manifest
    test = load_dataset(DataConfig(**m.data.config)).test
    gen = outputs_of(open_checkpoint(args.generalist), "the generalist")
    experts = load_experts(open_expert_run(args.experts), "experts", gen)
    expected = {}
    for rule in RULES:
        policy = RoutingPolicy(tau=m.routing.tau, k=m.routing.k, temperature=m.routing.temperature, fallback=rule)
        d = route(gen.test_logits, policy, membership_matrix(experts.subsets, len(m.classes)))
        expected[rule], _ = finalize(d, *experts.test.for_route(d.expert), policy)
        expected[f"{rule}-offload"] = d.offload
    np.savez(args.out / "expected.npz", images=test.images.numpy(), labels=test.labels.numpy(),
             **{k.replace("-", "_"): v for k, v in expected.items()})
    print(f"prepared {args.out}: bundle {bundle.root}, {len(test)} test images, offline answers for {RULES}")


def check(args: argparse.Namespace) -> None:
    from askexpert.contract.bundle import open_system
    from askexpert.costs.meters import MeterUnavailable, NvmlMeter
    from askexpert.routing import RoutingPolicy
    from askexpert.runtime.clients import HttpExpertClient
    from askexpert.runtime.edge import EdgeRunner, ExpertTarget, summarize
    from askexpert.runtime.onnx_model import OnnxGeneralist
    from askexpert.runtime.settings import Connection
    from askexpert_lab.testbed.server import ServerProcess

    bundle = open_system(args.dir / "system")
    m = bundle.manifest
    data = np.load(args.dir / "expected.npz")
    images, labels = data["images"][: args.limit], data["labels"][: args.limit]
    experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    out: dict = {"bundle": str(bundle.root), "images": len(images), "rules": {}}
    with ServerProcess(bundle.root, threads=4, extra_args=["--device", args.device], startup_timeout_s=300) as url:
        import httpx

        out["server"] = httpx.get(f"{url}/v1/health").json()
        for rule in RULES:
            policy = RoutingPolicy(tau=m.routing.tau, k=m.routing.k, temperature=m.routing.temperature, fallback=rule)
            try:
                meter = NvmlMeter()
                meter.start()
            except MeterUnavailable as err:
                meter, out["meter"] = None, str(err)
            t0 = time.perf_counter()
            with HttpExpertClient(url, Connection(timeout_s=10)) as client:
                runner = EdgeRunner(OnnxGeneralist(bundle.generalist_onnx, threads=1), policy, client, experts)
                traces = list(runner.run((images[i:i + 1], labels[i:i + 1]) for i in range(len(images))))
            seconds = time.perf_counter() - t0
            reading = meter.stop() if meter is not None else None
            live = np.array([t.pred for t in traces])
            key = rule.replace("-", "_")
            expected = data[key][: args.limit]
            offloaded = np.array([t.route.offloaded for t in traces])
            differ = np.flatnonzero(live != expected)
            s = summarize(traces)
            out["rules"][rule] = {
                "answers_equal_offline": int(len(live) - len(differ)), "differ": differ.tolist()[:50],
                "offload_decisions_equal": bool(np.array_equal(offloaded, data[f"{key}_offload"][: args.limit])),
                "summary": asdict(s), "seconds": seconds,
                "gpu_joules": reading.joules if reading else None, "gpu_watts": reading.watts if reading else None,
                "gpu_mj_per_offloaded_image": 1000 * reading.joules / max(int(offloaded.sum()), 1) if reading else None,
            }
            print(f"{rule}: {len(live) - len(differ)}/{len(live)} answers equal the offline ones; accuracy "
                  f"{s.accuracy:.2f}%, offload {s.offload_rate:.1f}%, latency p50 {s.latency_ms.p50:.2f} ms, "
                  f"expert {s.breakdown_ms_offloaded['expert_ms']:.2f} ms"
                  + (f", GPU {reading.watts:.0f} W" if reading else ""), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check.json").write_text(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--generalist", type=Path, required=True)
    p.add_argument("--experts", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(".gpu-bundle"))
    p = sub.add_parser("check")
    p.add_argument("--dir", type=Path, default=Path(".gpu-bundle"))
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--device", default="cuda", help="where the server runs the experts (cpu: a rehearsal)")
    p.add_argument("--out", type=Path, default=Path("/tmp/gpu-out"))
    args = ap.parse_args()
    prepare(args) if args.step == "prepare" else check(args)


if __name__ == "__main__":
    main()
