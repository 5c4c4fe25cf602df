"""One edge session, end to end: load the generalist, calibrate the router on validation data, open
the inputs and the expert server, stream everything through the edge runner, summarise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from askexpert.config import DataConfig
from askexpert.routing import RoutingPolicy, confidence_scores, fit_temperature, tau_for_offload
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.edge import EdgeRunner, SampleTrace, summarize
from askexpert.runtime.edge_models import OnnxGeneralist, TorchGeneralist
from askexpert.runtime.inputs import open_input
from askexpert.runtime.link import LinkProfile


@dataclass
class EdgeSettings:
    generalist: Path
    server: str | None
    inputs: list[str] = field(default_factory=lambda: ["split:test"])
    backend: str = "torch"  # torch | onnx
    onnx: Path | None = None
    link: LinkProfile | None = None
    offload_rate: float = 0.3
    tau: float | None = None
    temperature: float | None = None
    k: int = 3
    confidence: str = "max-prob"
    fallback: str = "other"
    batch_size: int = 1
    limit: int | None = None
    threads: int | None = None
    timeout_s: float = 2.0
    retries: int = 1
    trace: Path | None = None


def calibrate(generalist: Path, *, offload_rate: float, k: int, confidence: str = "max-prob",
              fallback: str = "other", tau: float | None = None, temperature: float | None = None) -> RoutingPolicy:
    """The routing policy: temperature fitted and tau chosen on the generalist's validation split
    (each only when not given explicitly)."""
    if tau is None or temperature is None:
        from askexpert.training.logits import cached_logits

        logits, labels = cached_logits(generalist, "val", device="cpu")
        temperature = temperature if temperature is not None else fit_temperature(logits, labels)
        if tau is None:
            conf = confidence_scores(torch.softmax(logits / temperature, 1), confidence)
            tau = tau_for_offload(conf, offload_rate)
    return RoutingPolicy(tau=tau, k=k, temperature=temperature, confidence=confidence, fallback=fallback)


def run_edge(s: EdgeSettings, *, progress=None) -> tuple[dict, list[SampleTrace], RoutingPolicy]:
    from askexpert.models import read_meta

    meta = read_meta(s.generalist)
    model = OnnxGeneralist(s.onnx, threads=s.threads) if s.backend == "onnx" else TorchGeneralist(
        s.generalist, threads=s.threads)
    policy = calibrate(s.generalist, offload_rate=s.offload_rate, k=s.k, confidence=s.confidence,
                       fallback=s.fallback, tau=s.tau, temperature=s.temperature)
    data = DataConfig(**meta.dataset["config"]) if meta.dataset.get("config") else None
    batches, n, description = open_input(s.inputs, input_spec=model.input, class_names=model.class_names, data=data,
                                         batch_size=s.batch_size, limit=s.limit)
    client = HttpExpertClient(s.server, timeout_s=s.timeout_s, retries=s.retries, link=s.link) if s.server else None
    runner = EdgeRunner(model, policy, client)
    task = progress.add_task(f"edge ({model.backend})", total=n, info=description) if progress is not None else None
    try:
        traces = list(runner.run(batches, trace_path=s.trace, progress=progress, task=task))
    finally:
        if client is not None:
            client.close()
    summary = summarize(traces)
    summary.update({"backend": model.backend, "input": description, "tau": policy.tau, "k": policy.k,
                    "temperature": policy.temperature, "link": s.link.describe() if s.link else "loopback (none)",
                    "server": s.server})
    return summary, traces, policy
