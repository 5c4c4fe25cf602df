"""One edge session, end to end: open the system, the inputs and the expert server, stream everything
through the edge runner, summarise.

With a bundle (``askexpert build-system``) the edge reads ``system.json`` and runs the ONNX generalist:
ONNX Runtime, NumPy and httpx, no torch, no dataset, no calibration at start. With a generalist's run
directory it runs the checkpoint in torch and calibrates on the validation split first (the full
install; kept for experiments).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import is_bundle, load_bundle
from askexpert.errors import AskExpertError, ConfigError
from askexpert.routing import DEFAULT_K, RoutingPolicy
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient, ServerSet
from askexpert.runtime.edge import EdgeModel, EdgeRunner, EdgeSummary, ExpertTarget, SampleTrace, summarize
from askexpert.runtime.inputs import open_input
from askexpert.runtime.link import LinkProfile
from askexpert.runtime.records import AnswerLog, resume, skip

log = logging.getLogger("askexpert.edge")


@dataclass
class EdgeSettings:
    system: Path  # a bundle (directory or archive), or a generalist's run directory
    server: str | list[str] | None  # one expert server's URL, or several (each expert asked where it is)
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
    deadline_s: float | None = None  # one offload, retries included (None: (retries + 1) * timeout_s)
    trace: Path | None = None
    predictions: Path | None = None
    resume: bool = False  # go on from the answers already in predictions / trace
    token: str | None = field(default=None, repr=False)  # the server's bearer token (never printed)
    ca_file: Path | None = None  # the authority of an https server's certificate
    expect_system_id: str | None = None  # the published sha256 of the bundle's system.json


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
    resumed: int = 0  # answers read back from an interrupted run's files


def open_system(s: EdgeSettings) -> EdgeSystem:
    if is_bundle(s.system):
        from askexpert.runtime.onnx_model import OnnxGeneralist

        bundle = load_bundle(s.system, expect_id=s.expect_system_id)
        m, r = bundle.manifest, bundle.manifest.routing
        policy = RoutingPolicy(
            tau=r.tau if s.tau is None else s.tau, k=r.k if s.k is None else s.k,
            temperature=r.temperature if s.temperature is None else s.temperature,
            confidence=s.confidence or r.confidence, fallback=s.fallback or r.fallback)
        experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
        return EdgeSystem(OnnxGeneralist(bundle.generalist_onnx, threads=s.threads), policy, experts,
                          dict(m.data.config), bundle.system_id, f"bundle {bundle.root}")
    if s.expect_system_id is not None:
        raise ConfigError(f"--expect-system-id pins a bundle, and {s.system} is a generalist's run directory",
                          fix="run the bundle (askexpert build-system), or leave out --expect-system-id")
    from askexpert.models import read_meta  # a run directory: the torch path
    from askexpert.runtime.edge_models import TorchGeneralist
    from askexpert.system.calibrate import generalist_policy

    policy = generalist_policy(s.system, offload_rate=s.offload_rate, k=s.k or DEFAULT_K,
                               confidence=s.confidence or "max-prob", fallback=s.fallback or "other", tau=s.tau,
                               temperature=s.temperature)
    return EdgeSystem(TorchGeneralist(s.system, threads=s.threads), policy, None,
                      read_meta(s.system).dataset.config or None, None, f"run {s.system}")


def _check_servers(clients: list[HttpExpertClient], system: EdgeSystem) -> None:
    """Refuse at the start what no retry can mend: a server that refuses our token, or (for a bundle's
    edge) a server holding another system, whose experts would be the wrong ones."""
    for client in clients:
        try:
            served = client.health().system_id
        except ExpertUnavailable as err:
            if err.status in (401, 403):
                raise AskExpertError(f"the server at {client.base_url} refuses this edge (HTTP {err.status}: "
                                     f"{'no token sent' if err.status == 401 else 'wrong token'})",
                                     fix="pass the server's token: --token-file FILE (or ASKEXPERT_TOKEN)") from err
            continue  # unreachable, or no health document: its samples degrade (said once) and it is asked later
        if system.system_id is not None and served is not None and served != system.system_id:
            raise AskExpertError(f"the server at {client.base_url} serves another system (system.json sha256 "
                                 f"{served[:12]}, this bundle {system.system_id[:12]})",
                                 fix="serve this bundle: askexpert serve BUNDLE")


def run_edge(s: EdgeSettings, *, progress=None) -> EdgeReport:
    """Answer every input, each batch's answers written (flushed) to ``s.predictions`` / ``s.trace`` as
    soon as it is made; with ``s.resume``, go on after the answers those files already hold."""
    system = open_system(s)
    model = system.model
    source = open_input(s.inputs, input_spec=model.input, class_names=model.class_names, data=system.data,
                        batch_size=s.batch_size, limit=s.limit)
    restored = resume(s.predictions, s.trace, files=source.files, count=source.count) if s.resume else []
    if restored:
        log.info("resuming after %d answers already in %s", len(restored),
                 " and ".join(str(p) for p in (s.predictions, s.trace) if p is not None))
    urls = [s.server] if isinstance(s.server, str) else list(s.server or [])
    clients = [HttpExpertClient(url, timeout_s=s.timeout_s, retries=s.retries, link=s.link, deadline_s=s.deadline_s,
                                token=s.token, ca_file=s.ca_file, system_id=system.system_id) for url in urls]
    client = clients[0] if len(clients) == 1 else ServerSet(clients) if clients else None
    try:
        _check_servers(clients, system)
        runner = EdgeRunner(model, system.policy, client, system.experts)
        task = progress.add_task(f"edge ({model.backend})", total=source.count, completed=len(restored),
                                 info=source.description) if progress else None
        with AnswerLog(s.predictions, s.trace, class_names=list(model.class_names), files=source.files,
                       append=bool(restored)) as answers:
            traces = restored + list(runner.run(skip(source.batches, len(restored)), start_index=len(restored),
                                                on_batch=answers.write, progress=progress, task=task))
    finally:
        if client is not None:
            client.close()
    return EdgeReport(summarize(traces), traces, system.policy, model.backend, source.description,
                      s.link.describe() if s.link else "loopback (none)", ", ".join(urls) or None, system.source,
                      list(model.class_names), source.files, len(restored))


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
