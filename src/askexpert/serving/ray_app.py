"""The expert server on Ray Serve: ``askexpert serve SOURCE --backend ray [--address auto]``.

The same HTTP contract as the uvicorn server, by construction: every ingress replica serves
:func:`.app.create_app` itself (routes, wire format, OpenAPI schema, metric names, token and limits);
only the :class:`.app.Experts` behind it differ::

    HTTP -> Ray Serve proxy (host:port) -> ingress replica(s): create_app(RayExperts)
                                               |  DeploymentHandle calls, images as NumPy arrays
                                               v
             expert-<id> replicas: one expert each (ExpertPool(only=[id])), requests batched by @serve.batch
             or, with ``multiplex``, one "experts" deployment whose replicas hold up to K experts each,
             loaded on demand (serve.multiplexed) and batched per expert

A request larger than ``--max-batch`` images is sent in parts of at most that many, one after another
(a replica's memory is bounded by one batch, and other requests get their turn between the parts).
Replicas, autoscaling, CPUs, GPU fractions and health checks come from a :class:`RaySettings` YAML
file (``--ray-config``, shipped example: ``configs/ray-serve.yaml``) and ``--ray-set key=value``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from askexpert.config import apply_overrides, read_yaml, validate
from askexpert.contract.bundle import System, is_bundle, open_system
from askexpert.contract.protocol import ExpertInfo
from askexpert.contract.reroute import Reroute
from askexpert.errors import AskExpertError
from askexpert.serving.app import ServerLimits, create_app
from askexpert.serving.batcher import BatchTimings
from askexpert.serving.pool import ExpertOutput, ExpertPool, open_source, served_ids

log = logging.getLogger("askexpert.server")
APP_NAME = "askexpert"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Autoscaling(_Strict):
    """Ray Serve's autoscaling: replicas follow the requests each one has in progress."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0, description="requests a replica should have in progress")
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)


class DeploymentSettings(_Strict):
    """How one deployment's replicas are sized and placed."""

    replicas: int = Field(1, ge=1, description="fixed number of replicas (ignored with autoscaling)")
    autoscaling: Autoscaling | None = None
    cpus: float | None = Field(None, ge=0, description="logical CPUs a replica reserves (default: experts one, "
                               "or the local cluster's CPUs shared by the expert replicas when fewer; ingress 0)")
    gpus: float = Field(0.0, ge=0, description="share of a GPU a replica reserves (0.25: four share one)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads in a replica (default: --threads, "
                                "else its CPUs, at least one)")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica takes at once (what it can batch)")
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)


class Multiplex(_Strict):
    """One deployment for every expert, each replica holding up to ``models_per_replica`` of them
    (for more experts than accelerator memory holds); requests go to a replica that has their expert."""

    models_per_replica: int = Field(2, ge=1)


class RaySettings(_Strict):
    """The Ray Serve backend's deployments (``--ray-config FILE``, ``--ray-set key=value``)."""

    ingress: DeploymentSettings = Field(default_factory=lambda: DeploymentSettings(cpus=0.0, max_ongoing_requests=256))
    experts: DeploymentSettings = Field(default_factory=DeploymentSettings, description="every expert deployment")
    per_expert: dict[str, dict] = Field(default_factory=dict, description="expert id -> keys of experts overridden")
    multiplex: Multiplex | None = None

    def for_expert(self, key: str) -> DeploymentSettings:
        if key not in self.per_expert:
            return self.experts
        return validate(DeploymentSettings, {**self.experts.model_dump(exclude_unset=True), **self.per_expert[key]},
                        f"per_expert.{key}")


def load_ray_settings(path: Path | None = None, overrides: list[str] | None = None) -> RaySettings:
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    settings = validate(RaySettings, data, str(path or "(defaults)") + (" with --ray-set" if overrides else ""))
    for key in settings.per_expert:
        settings.for_expert(key)  # an invalid override is said now, not when that expert deploys
    return settings


def _images_in(items: list[tuple[str, np.ndarray]]) -> int:
    """@serve.batch's batch size: images, not calls."""
    return sum(len(images) for _, images in items)


@dataclass(frozen=True)
class ReplicaInfo:
    """What an expert deployment tells the ingress of one expert it holds."""

    info: ExpertInfo
    output_ids: list[int]
    device: str
    system_id: str | None


@dataclass(frozen=True)
class BatchReport:
    """What comes back with each part of a request: the compute time and size of the batch it ran in;
    ``reports_batch`` on the batch's first part only, so the metrics count each batch once."""

    compute_s: float
    batch_size: int
    reports_batch: bool


class ExpertReplica:
    """A replica of an expert deployment: loads its expert(s), answers batches of parts of requests."""

    def __init__(self, source: str, keys: list[str] | None, *, device: str, trace: bool, threads: int,
                 expect_system_id: str | None, max_batch: int, max_wait_ms: float) -> None:
        torch.set_num_threads(threads)
        sys.setswitchinterval(0.0002)  # the event loop and the model thread share the GIL: hand it over often
        self._load_args = dict(device=device, trace=trace, expect_system_id=expect_system_id)
        self.source = source
        self.system: System | None = None  # the bundle opened once, where a replica loads experts on demand
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="askexpert-model")
        self._pool = ExpertPool(Path(source), only=keys, **self._load_args) if keys is not None else None
        self.infer.set_max_batch_size(max_batch)
        self.infer.set_batch_wait_timeout_s(max_wait_ms / 1000)

    async def pool_for(self, key: str) -> ExpertPool:
        return self._pool

    async def describe(self, key: str) -> ReplicaInfo:
        """What the ingress needs to know of expert ``key``."""
        pool = await self.pool_for(key)
        served = pool.get(key)
        return ReplicaInfo(served.info(), list(served.output_ids), str(pool.device), pool.system_id)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_images_in)
    async def infer(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[np.ndarray, BatchReport]]:
        key = items[0][0]  # one expert a batch (multiplexed batches are split by expert)
        pool = await self.pool_for(key)
        images = items[0][1] if len(items) == 1 else np.concatenate([part for _, part in items])
        started = time.perf_counter()
        output = await asyncio.get_running_loop().run_in_executor(self._executor, pool.infer, key, images)
        compute = time.perf_counter() - started
        probs = output.probs.numpy()
        replies, offset = [], 0
        for i, (_, part) in enumerate(items):  # the first part of a batch reports the batch (metrics count it once)
            replies.append((probs[offset:offset + len(part)],
                            BatchReport(compute, len(images), i == 0)))
            offset += len(part)
        return replies

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: every loaded model still answers one image with probabilities."""
        pools = [self._pool] if self._pool is not None else list(self._loaded.values())
        for pool in pools:
            for key in pool.ids():
                served = pool.get(key)
                c, s = served.spec.input.channels, served.spec.input.size
                probe = np.zeros((1, c, s, s), np.uint8)
                output = await asyncio.get_running_loop().run_in_executor(self._executor, pool.infer, key, probe)
                if not torch.isfinite(output.probs).all():
                    raise RuntimeError(f"expert {key} answers non-finite probabilities")


def _multiplexed_replica(models_per_replica: int) -> type:
    """An :class:`ExpertReplica` holding up to ``models_per_replica`` experts, loaded when first asked."""

    class MultiplexedExperts(ExpertReplica):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._loaded: dict[str, ExpertPool] = {}
            if is_bundle(Path(self.source)):  # checked (and an archive unpacked) once, not at every load
                self.system = open_system(Path(self.source), expect_id=self._load_args["expect_system_id"])
                self._load_args["verify"] = False

        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def pool_for(self, key: str) -> ExpertPool:
            pool = await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: ExpertPool(self.system or Path(self.source), only=[key], **self._load_args))
            self._loaded[key] = pool
            return _Evicting(pool, self._loaded, key)

    return MultiplexedExperts


class _Evicting:
    """A multiplexed expert's pool; when Ray Serve evicts it (``__del__``), the health check forgets it."""

    def __init__(self, pool: ExpertPool, loaded: dict, key: str) -> None:
        self._pool, self._loaded, self._key = pool, loaded, key

    def __getattr__(self, name: str):
        return getattr(self._pool, name)

    def __del__(self) -> None:
        self._loaded.pop(self._key, None)


class RayExperts:
    """The :class:`.app.Experts` backend of an ingress replica: calls to the expert deployments' handles."""

    def __init__(self, handles: dict[str, serve.handle.DeploymentHandle], *, max_batch: int,
                 multiplexed: bool) -> None:
        self._handles, self._max_batch, self._multiplexed = handles, max_batch, multiplexed
        self.infos: dict[str, ExpertInfo] = {}
        self.device, self.system_id = "", None
        self.reroute = None  # the Ingress passes the bundle's rule to create_app
        self.on_batch = None
        self._output_ids: dict[str, list[int]] = {}
        self._waiting = dict.fromkeys(handles, 0)

    def _handle(self, key: str):
        handle = self._handles[key]
        return handle.options(multiplexed_model_id=key) if self._multiplexed else handle

    async def describe(self) -> None:
        replies = await asyncio.gather(*(self._handle(key).describe.remote(key) for key in self._handles))
        for key, reply in zip(self._handles, replies, strict=True):
            self.infos[key] = reply.info
            self._output_ids[key] = reply.output_ids
        devices = sorted({reply.device for reply in replies})
        self.device = devices[0] if len(devices) == 1 else ", ".join(devices)
        self.system_id = replies[0].system_id if replies else None

    def depth(self, key: str) -> int:
        return self._waiting[key]

    async def submit(self, key: str, images: np.ndarray) -> tuple[ExpertOutput, BatchTimings]:
        started = time.perf_counter()
        handle = self._handle(key)
        self._waiting[key] += len(images)
        try:
            replies = []
            for first in range(0, len(images), self._max_batch):
                replies.append(await handle.infer.remote((key, images[first:first + self._max_batch])))
        finally:
            self._waiting[key] -= len(images)
        compute = 0.0
        for _, report in replies:
            compute += report.compute_s
            if report.reports_batch and self.on_batch is not None:
                self.on_batch(key, report.batch_size, report.compute_s)
        probs = replies[0][0] if len(replies) == 1 else np.concatenate([p for p, _ in replies])
        elapsed = time.perf_counter() - started  # transport to and from the replicas counts as queueing
        return (ExpertOutput(torch.from_numpy(np.ascontiguousarray(probs)), self._output_ids[key]),
                BatchTimings(queue_ms=max(elapsed - compute, 0.0) * 1000, compute_ms=compute * 1000,
                             batch_size=max(r.batch_size for _, r in replies)))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@serve.ingress()
class Ingress:
    """The HTTP face: the uvicorn server's application over :class:`RayExperts`."""

    async def __init__(self, handles: dict, *, max_batch: int, multiplexed: bool, limits: ServerLimits,
                       token: str | None, reroute: Reroute | None = None) -> None:
        self.experts = RayExperts(handles, max_batch=max_batch, multiplexed=multiplexed)
        await self.experts.describe()
        self._limits, self._token, self._reroute = limits, token, reroute

    def __serve_build_asgi_app__(self):
        return create_app(self.experts, limits=self._limits, token=self._token, reroute=self._reroute)


def _deployment_options(settings: DeploymentSettings, cpus: float) -> dict:
    options = {"ray_actor_options": {"num_cpus": cpus, "num_gpus": settings.gpus},
               "max_ongoing_requests": settings.max_ongoing_requests,
               "health_check_period_s": settings.health_check_period_s,
               "health_check_timeout_s": settings.health_check_timeout_s,
               "max_constructor_retry_count": 2}  # a replica that cannot load its model fails the deploy soon
    if settings.autoscaling is not None:
        options["autoscaling_config"] = settings.autoscaling.model_dump()
    else:
        options["num_replicas"] = settings.replicas
    return options


def _replicas(settings: DeploymentSettings) -> int:
    return settings.autoscaling.min_replicas if settings.autoscaling is not None else settings.replicas


def build_app(source: Path, settings: RaySettings, *, keys: list[str], cluster_cpus: float, device: str = "auto",
              trace: bool = True, threads: int | None = None, expect_system_id: str | None = None,
              max_batch: int = 64, max_wait_ms: float = 0.0, limits: ServerLimits | None = None,
              token: str | None = None, reroute: Reroute | None = None):
    """The Ray Serve application (``serve.run`` it) serving experts ``keys`` of ``source``; ``reroute``: the
    bundle's re-routing rule, applied by the ingress as by the uvicorn server."""
    source = Path(source).resolve()  # replicas may start in another working directory
    groups = {"experts": settings.experts} if settings.multiplex else {k: settings.for_expert(k) for k in keys}
    needed = sum(_replicas(s) for s in groups.values() if s.cpus is None)
    auto_cpus = min(1.0, cluster_cpus / needed) if needed else 1.0  # defaults that fit a small machine
    deployments = {}
    for name, group in groups.items():
        cpus = group.cpus if group.cpus is not None else auto_cpus
        replica_threads = group.threads or threads or max(1, math.floor(cpus))
        # a replica without a GPU share stays off the GPUs (Ray leaves them visible to it)
        replica_device = "cpu" if device == "auto" and group.gpus == 0 else device
        common = dict(device=replica_device, trace=trace, threads=replica_threads, expect_system_id=expect_system_id,
                      max_batch=max_batch, max_wait_ms=max_wait_ms)
        if settings.multiplex:
            cls = _multiplexed_replica(settings.multiplex.models_per_replica)
            app = serve.deployment(cls, name="experts").options(**_deployment_options(group, cpus))
            deployments = dict.fromkeys(keys, app.bind(str(source), None, **common))
        else:
            app = serve.deployment(ExpertReplica, name=f"expert-{name}").options(**_deployment_options(group, cpus))
            deployments[name] = app.bind(str(source), [name], **common)
    ingress = settings.ingress
    return serve.deployment(Ingress, name="ingress").options(
        **_deployment_options(ingress, ingress.cpus if ingress.cpus is not None else 0.0)).bind(
        deployments, max_batch=max_batch, multiplexed=settings.multiplex is not None,
        limits=limits or ServerLimits(), token=token, reroute=reroute)


class _Stopped(Exception):
    """SIGINT or SIGTERM while the application deploys."""


def run_server(source: Path, settings: RaySettings, *, address: str | None, host: str, port: int,
               include_general: bool = True, only: list[str] | None = None, ssl_certfile: Path | None = None,
               ssl_keyfile: Path | None = None, log_level: str = "warning", on_ready=None, **app_args) -> None:
    """Start (or join, with ``address``) a Ray cluster, deploy the experts of ``source`` on it and serve
    them on ``host:port`` until SIGINT or SIGTERM; then take the application down (and the cluster, if
    this process started it)."""
    opened = open_source(source, verify=True,  # damage: said here, not by replicas failing in turn
                         expect_system_id=app_args.get("expect_system_id"))
    keys = served_ids(opened, include_general=include_general, only=only)
    level = getattr(logging, log_level.upper(), logging.WARNING)
    ray.init(address=address, logging_level=level, include_dashboard=False, log_to_driver=level <= logging.INFO,
             configure_logging=True)
    stop, serving = threading.Event(), False

    def on_signal(*_) -> None:  # replaces Ray's own handler, which aborts the process
        if not serving:
            raise _Stopped  # still deploying: stop waiting for it, and take it down
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        http = {"host": host, "port": port}
        if ssl_certfile:
            http.update(ssl_certfile=str(ssl_certfile), ssl_keyfile=str(ssl_keyfile))
        serve.start(http_options=http)
        reroute = opened.manifest.routing.reroute if isinstance(opened, System) else None
        app = build_app(source, settings, keys=keys, cluster_cpus=cluster_cpus,
                        reroute=reroute.rule() if reroute is not None else None, **app_args)
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": log_level.upper()})
        except RuntimeError as err:  # a replica failed to start: Ray's message says which and why
            first = str(err).strip().splitlines()[0][:400]
            raise AskExpertError(f"Ray Serve could not deploy the experts: {first}",
                                 fix="see the replicas' errors above (run with --log-level info) and in "
                                 "/tmp/ray/session_latest/logs/serve/") from err
        serving = True
        if on_ready is not None:
            on_ready(keys, cluster_cpus)
        while not stop.wait(1.0):
            pass
    except _Stopped:
        log.warning("stopped before Ray Serve reported the application running")
    finally:
        try:
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
