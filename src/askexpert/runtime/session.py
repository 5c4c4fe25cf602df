"""One edge session, end to end: open the system, the inputs and the expert server, stream everything
through the edge runner, summarise.

With a system (:func:`askexpert.contract.bundle.open_system`: a bundle, opened once) the edge reads
``system.json`` and runs the ONNX generalist: ONNX Runtime, NumPy and httpx, no torch, no dataset, no
calibration at start. A generalist's run directory comes calibrated from build time
(:func:`askexpert.system.calibrate.calibrated_run`, which ``askexpert edge`` calls), as a
:class:`GeneralistRun`: the checkpoint in torch with that policy (the full install; kept for experiments).
Run time never calibrates, and never imports training.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from askexpert.contract.bundle import System, open_system
from askexpert.contract.protocol import RAW
from askexpert.contract.schema import OperatingCurve
from askexpert.corruptions import Corruption
from askexpert.costs.energy import edge_mj_per_image
from askexpert.costs.profiles import device, network
from askexpert.errors import AskExpertError, ConfigError
from askexpert.routing import RoutingPolicy
from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient, ServerSet
from askexpert.runtime.control import (
    ACCURACY_WINDOW,
    WINDOW,
    AccuracyKeeper,
    BudgetController,
    Controller,
    ControlReport,
    OffloadTracker,
    control_report,
)
from askexpert.runtime.edge import EdgeModel, EdgeRunner, EdgeSummary, ExpertTarget, SampleTrace, summarize
from askexpert.runtime.inputs import open_input
from askexpert.runtime.link import LinkSchedule
from askexpert.runtime.oip_client import OipExpertClient, bundle_experts
from askexpert.runtime.pacing import NO_PACING, Pacer
from askexpert.runtime.records import AnswerLog, resume, skip
from askexpert.runtime.settings import Connection, Control, EdgeSettings, Security
from askexpert.security import refuse_pin_without_bundle

log = logging.getLogger("askexpert.edge")


@dataclass(frozen=True)
class GeneralistRun:
    """A generalist's run directory with the routing policy build time calibrated for it on validation."""

    run_dir: Path
    policy: RoutingPolicy
    data: dict | None  # the generalist's dataset config (for split: inputs)


@dataclass
class EdgeSystem:
    """What the edge needs: its model, the routing policy and (from a bundle) the experts it may choose."""

    model: EdgeModel
    policy: RoutingPolicy
    experts: list[ExpertTarget] | None
    data: dict | None  # the generalist's dataset config (for split: inputs)
    system_id: str | None  # sha256 of system.json (None: a run directory)
    source: str
    curve: OperatingCurve | None = None  # the bundle's operating curve (none: schema 1, a run directory)
    bundle: System | None = None  # the opened bundle (None: a run directory)


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
    control: ControlReport | None = None  # what holding the operating point did (a controller ran)
    corruption: str | None = None
    encoding: str | None = None  # how offloaded images travelled (None: nothing was sent)


def edge_system(s: EdgeSettings, pacer: Pacer = NO_PACING) -> EdgeSystem:
    """What the edge runs: the opened system's ONNX generalist and routing (the settings' overrides applied),
    or a calibrated generalist run's checkpoint in torch."""
    if isinstance(s.system, GeneralistRun):
        refuse_pin_without_bundle(s.security.expect_system_id, s.system.run_dir, "a generalist's run directory", "run")
        from askexpert.runtime.edge_models import TorchGeneralist  # a run directory: the torch path

        run = s.system
        return EdgeSystem(TorchGeneralist(run.run_dir, threads=s.threads), run.policy, None, run.data, None,
                          f"run {run.run_dir}")
    from askexpert.runtime.onnx_model import OnnxGeneralist

    system = open_system(s.system, expect_id=s.security.expect_system_id)
    m, r = system.manifest, system.manifest.routing
    c = s.control
    try:
        policy = RoutingPolicy.from_spec(r, tau=c.tau, k=c.k, temperature=c.temperature, confidence=c.confidence,
                                         fallback=c.fallback)
    except ValueError as err:
        raise ConfigError(f"bundle {system.root}: {err}", fix="run at the bundle's k, or pass --confidence "
                          "max-prob (or margin, entropy) to use a confidence rule instead; a rule this askexpert "
                          "cannot read: build the bundle again with it") from err
    experts = [ExpertTarget(e.id, list(e.classes)) for e in m.experts]
    return EdgeSystem(OnnxGeneralist(system.generalist_onnx, threads=s.threads, pacer=pacer), policy, experts,
                      dict(m.data.config), system.system_id, f"bundle {system.root}", m.curve, system)


def _clients(conn: Connection, security: Security, system: EdgeSystem, pacer: Pacer) -> list[HttpExpertClient]:
    """One client a server: askexpert's ``/v1``, or (``protocol`` v2, a bundle's edge) the Open Inference
    Protocol's, which reads what the experts are from the bundle."""
    urls = conn.urls
    kw = dict(system_id=system.system_id, pacer=pacer)
    if conn.protocol == "v1":
        return [HttpExpertClient(url, conn, security, **kw) for url in urls]
    if conn.protocol != "v2":
        raise ConfigError(f"unknown server protocol {conn.protocol!r}", fix="--server-protocol v1 or v2")
    if urls and system.bundle is None:
        raise ConfigError("--server-protocol v2 needs a bundle: what the experts are (classes, temperature) comes "
                          "from it", fix="build one: askexpert build-system GENERALIST_RUN EXPERTS_RUN --out DIR")
    if urls and system.policy.reroute is not None:
        raise ConfigError(f"this bundle re-routes on the server (at most {system.policy.reroute.tries} experts an "
                          "offload), which only askexpert's own /v1 protocol can ask for",
                          fix="--server-protocol v1 with askexpert serve BUNDLE, or a bundle built without --reroute")
    if urls and conn.encoding != RAW:
        raise ConfigError(f"--encode {conn.encoding}: the Open Inference Protocol sends raw UINT8 tensors",
                          fix="leave --encode out with --server-protocol v2")
    infos = bundle_experts(system.bundle) if system.bundle is not None else []
    return [OipExpertClient(url, infos, conn, security, **kw) for url in urls]


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


def controller_for(s: Control, system: EdgeSystem) -> tuple[str, float, Controller] | None:
    """The controller the settings ask for (mode, target, controller), or None for a fixed tau.
    --target-accuracy may go with one budget (--slo-p95 or --energy-budget), which caps it."""
    asked = [(flag, v) for flag, v in (("--slo-p95", s.slo_p95_ms), ("--energy-budget", s.energy_budget_mj),
                                       ("--target-offload", s.target_offload),
                                       ("--target-accuracy", s.target_accuracy)) if v is not None]
    if not asked:
        return None
    budgets = [f for f, _ in asked if f != "--target-accuracy"]
    if len(budgets) > 1 or (s.target_accuracy is not None and s.target_offload is not None):
        raise ConfigError(f"{' and '.join(f for f, _ in asked)} each move tau: give one (--target-accuracy may "
                          f"go with --slo-p95 or --energy-budget, which caps it)",
                          fix="hold one target: --slo-p95, --energy-budget, --target-offload or --target-accuracy")
    if s.tau is not None:
        raise ConfigError(f"--tau fixes the threshold and {asked[0][0]} moves it", fix="leave out --tau")
    tau = system.policy.tau
    if s.target_offload is not None:
        return "target-offload", s.target_offload, OffloadTracker(s.target_offload, tau)
    budget = None
    if budgets:
        if system.curve is None:
            why = "a generalist's run directory" if system.system_id is None else "a schema-1 bundle"
            raise ConfigError(f"{budgets[0]} moves tau along the bundle's operating curve, and {system.source} has "
                              f"none ({why})", fix="build the bundle with this askexpert (askexpert build-system)")
        points = system.curve.for_k(system.policy.k)
        if not points:
            raise ConfigError(f"the bundle's operating curve has no point with k {system.policy.k}",
                              fix=f"run with --k among {system.curve.ks}")
        budget = (BudgetController(points, tau, slo_p95_ms=s.slo_p95_ms) if s.slo_p95_ms is not None else
                  BudgetController(points, tau, energy_mj=s.energy_budget_mj, edge=device(s.energy_profile),
                                   radio=network(s.radio)))
    if s.target_accuracy is not None:
        return "target-accuracy", s.target_accuracy, AccuracyKeeper(s.target_accuracy, tau, probe=s.probe,
                                                                    budget=budget)
    if s.slo_p95_ms is not None:
        return "slo-p95", s.slo_p95_ms, budget
    return "energy-budget", s.energy_budget_mj, budget


@contextmanager
def _link_signal(link):
    """SIGUSR1 moves a link schedule to its next entry (a link changed by a signal), while the run lasts."""
    if not isinstance(link, LinkSchedule) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGUSR1, link.advance)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _corrupted(batches, corruption: Corruption | None, first: int):
    """The batches with ``corruption`` applied (the stream's images numbered from ``first``)."""
    index = first
    for images, labels in batches:
        yield (images if corruption is None else corruption.apply(images, index)), labels
        index += len(images)


def run_edge(s: EdgeSettings, *, progress=None, pacer: Pacer = NO_PACING) -> EdgeReport:
    """Answer every input, each batch's answers written (flushed) to ``s.outputs``' predictions / trace as
    soon as it is made; with ``resume``, go on after the answers those files already hold. ``pacer``: an
    emulated edge's (:mod:`askexpert.runtime.pacing`); the real edge runs at its own speed."""
    system = edge_system(s, pacer)
    model, conn, ins, out = system.model, s.connection, s.inputs, s.outputs
    source = open_input(ins.sources, input_spec=model.input, class_names=model.class_names, data=system.data,
                        batch_size=ins.batch_size, limit=ins.limit)
    restored = resume(out.predictions, out.trace, files=source.files, count=source.count) if out.resume else []
    if restored:
        log.info("resuming after %d answers already in %s", len(restored),
                 " and ".join(str(p) for p in (out.predictions, out.trace) if p is not None))
    urls = conn.urls
    clients = _clients(conn, s.security, system, pacer)
    client = clients[0] if len(clients) == 1 else ServerSet(clients) if clients else None
    control = controller_for(s.control, system)
    try:
        _check_servers(clients, system)
        runner = EdgeRunner(model, system.policy, client, system.experts,
                            controller=control[2] if control else None,
                            link=conn.link if isinstance(conn.link, LinkSchedule) else None)
        task = progress.add_task(f"edge ({model.backend})", total=source.count, completed=len(restored),
                                 info=source.description) if progress else None
        batches = _corrupted(skip(source.batches, len(restored)), ins.corrupt, len(restored))
        with AnswerLog(out.predictions, out.trace, class_names=list(model.class_names), files=source.files,
                       append=bool(restored)) as answers, _link_signal(conn.link):
            traces = restored + list(runner.run(batches, start_index=len(restored), on_batch=answers.write,
                                                progress=progress, task=task))
    finally:
        if client is not None:
            client.close()
    report = None
    if control is not None:
        mode, target, controller = control
        energy = ((lambda chunk: edge_mj_per_image(chunk, device(s.control.energy_profile), network(s.control.radio)))
                  if mode == "energy-budget" else None)
        accuracy = mode == "target-accuracy"
        report = control_report(mode, target, controller.changes, traces[len(restored):], energy_mj=energy,
                                window=ACCURACY_WINDOW if accuracy else WINDOW,
                                kept_estimate=controller.kept_estimate if accuracy else None)
    return EdgeReport(summarize(traces), traces, runner.policy, model.backend, source.description,
                      conn.link.describe() if conn.link else "loopback (none)", ", ".join(urls) or None,
                      system.source, list(model.class_names), source.files, len(restored), report,
                      ins.corrupt.describe() if ins.corrupt else None, str(conn.encoding) if urls else None)


def freeze_split(s: EdgeSettings, out: Path) -> EdgeSettings:
    """The same settings reading a ``.npz`` of the images a ``split:`` input would stream (the same
    stratified subset): what an emulated edge reads, as a deployed one would (no dataset, no torch)."""
    sources = s.inputs.sources
    if not (len(sources) == 1 and sources[0].startswith("split:")):
        return s
    system = edge_system(s)
    source = open_input(sources, input_spec=system.model.input, class_names=system.model.class_names,
                        data=system.data, batch_size=256, limit=s.inputs.limit)
    images, labels = zip(*source.batches, strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=np.concatenate(images), labels=np.concatenate(labels))
    return s.with_(sources=[str(out)], limit=None)
