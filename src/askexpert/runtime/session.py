"""One edge session, end to end: open the system, the inputs and the expert server, stream everything
through the edge runner, summarise.

With a bundle (``askexpert build-system``) the edge reads ``system.json`` and runs the ONNX generalist:
ONNX Runtime, NumPy and httpx, no torch, no dataset, no calibration at start. With a generalist's run
directory it runs the checkpoint in torch and calibrates on the validation split first (the full
install; kept for experiments).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from askexpert.errors import AskExpertError
from askexpert.routing import DEFAULT_K, RoutingPolicy
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.edge import EdgeModel, EdgeRunner, EdgeSummary, ExpertTarget, SampleTrace, summarize
from askexpert.runtime.inputs import open_input
from askexpert.runtime.link import LinkProfile
from askexpert.system.bundle import is_bundle, load_bundle


@dataclass
class EdgeSettings:
    system: Path  # a bundle (directory or archive), or a generalist's run directory
    server: str | None
    inputs: list[str] = field(default_factory=lambda: ["split:test"])
    link: LinkProfile | None = None
    offload_rate: float = 0.3  # run directories only: the bundle fixed its operating point at build time
    tau: float | None = None  # overrides
    temperature: float | None = None
    k: int | None = None
    confidence: str | None = None
    fallback: str | None = None
    batch_size: int = 1
    limit: int | None = None
    threads: int | None = None
    timeout_s: float = 2.0
    retries: int = 1
    trace: Path | None = None


@dataclass
class EdgeSystem:
    """What the edge needs: its model, the routing policy and (from a bundle) the experts it may choose."""

    model: EdgeModel
    policy: RoutingPolicy
    experts: list[ExpertTarget] | None
    data: dict | None  # the generalist's dataset config (for split: inputs)
    system_id: str | None  # sha256 of system.json (None: a run directory)
    source: str


@dataclass
class EdgeReport:
    summary: EdgeSummary
    traces: list[SampleTrace]
    policy: RoutingPolicy
    backend: str
    input: str
    link: str
    server: str | None
    source: str
    class_names: list[str] = field(default_factory=list)
    files: list[str] | None = None  # each input's file, by index (file and folder inputs)

    def write_predictions(self, path: Path) -> None:
        """A CSV row per input: its file, true and predicted class (id and name), the generalist's own
        answer, confidence, route and expert, and whether the answer is degraded."""
        import csv

        names = self.class_names

        def name(c: int | None) -> str:
            return names[c] if c is not None and 0 <= c < len(names) else ""

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "file", "label", "label_name", "pred", "pred_name", "local_pred", "local_pred_name",
                        "confidence", "route", "expert", "degraded"])
            for t in self.traces:
                w.writerow([t.index, self.files[t.index] if self.files else "",
                            "" if t.label is None else t.label, name(t.label), t.pred, name(t.pred), t.local_pred,
                            name(t.local_pred), f"{t.confidence:.4f}", t.route.value, t.expert or "",
                            int(t.degraded)])


def open_system(s: EdgeSettings) -> EdgeSystem:
    if is_bundle(s.system):
        from askexpert.runtime.onnx_model import OnnxGeneralist

        bundle = load_bundle(s.system)
        m, r = bundle.manifest, bundle.manifest.routing
        policy = RoutingPolicy(
            tau=r.tau if s.tau is None else s.tau, k=r.k if s.k is None else s.k,
            temperature=r.temperature if s.temperature is None else s.temperature,
            confidence=s.confidence or r.confidence, fallback=s.fallback or r.fallback)
        experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
        return EdgeSystem(OnnxGeneralist(bundle.generalist_onnx, threads=s.threads), policy, experts,
                          dict(m.data.config), bundle.system_id, f"bundle {bundle.root}")
    from askexpert.models import read_meta  # a run directory: the torch path
    from askexpert.runtime.edge_models import TorchGeneralist
    from askexpert.system.calibrate import generalist_policy

    policy = generalist_policy(s.system, offload_rate=s.offload_rate, k=s.k or DEFAULT_K,
                               confidence=s.confidence or "max-prob", fallback=s.fallback or "other", tau=s.tau,
                               temperature=s.temperature)
    return EdgeSystem(TorchGeneralist(s.system, threads=s.threads), policy, None,
                      read_meta(s.system).dataset.get("config"), None, f"run {s.system}")


def _check_server(client: HttpExpertClient, system: EdgeSystem, url: str) -> None:
    """A bundle's edge and a server holding another system would route to the wrong experts: refuse."""
    if system.system_id is None:
        return
    try:
        served = client.health().system_id
    except ExpertUnavailable:
        return  # unreachable now: the runner degrades gracefully and retries later
    if served is not None and served != system.system_id:
        raise AskExpertError(f"the server at {url} serves another system (system.json sha256 {served[:12]}, this "
                             f"bundle {system.system_id[:12]})", fix="serve this bundle: askexpert serve BUNDLE")


def run_edge(s: EdgeSettings, *, progress=None) -> EdgeReport:
    system = open_system(s)
    model = system.model
    source = open_input(s.inputs, input_spec=model.input, class_names=model.class_names, data=system.data,
                        batch_size=s.batch_size, limit=s.limit)
    client = HttpExpertClient(s.server, timeout_s=s.timeout_s, retries=s.retries, link=s.link) if s.server else None
    try:
        if client is not None:
            _check_server(client, system, s.server)
        runner = EdgeRunner(model, system.policy, client, system.experts)
        task = progress.add_task(f"edge ({model.backend})", total=source.count, info=source.description) \
            if progress else None
        traces = list(runner.run(source.batches, trace_path=s.trace, progress=progress, task=task))
    finally:
        if client is not None:
            client.close()
    return EdgeReport(summarize(traces), traces, system.policy, model.backend, source.description,
                      s.link.describe() if s.link else "loopback (none)", s.server, system.source,
                      list(model.class_names), source.files)


def freeze_split(s: EdgeSettings, out: Path) -> EdgeSettings:
    """The same settings reading a ``.npz`` of the images a ``split:`` input would stream (the same
    stratified subset): what an emulated edge reads, as a deployed one would (no dataset, no torch)."""
    if not (len(s.inputs) == 1 and s.inputs[0].startswith("split:")):
        return s
    system = open_system(s)
    source = open_input(s.inputs, input_spec=system.model.input, class_names=system.model.class_names,
                        data=system.data, batch_size=256, limit=s.limit)
    images, labels = zip(*source.batches, strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=np.concatenate(images), labels=np.concatenate(labels))
    return replace(s, inputs=[str(out)], limit=None)
