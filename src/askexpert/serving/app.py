"""The expert server's HTTP face (FastAPI): transport only; the models live in :mod:`.pool`.

    GET  /v1/health                  liveness, number of experts, device
    GET  /v1/experts                 every expert: id, classes, model, input shape
    POST /v1/experts/{id}/infer      a batch of images -> answers + server timings (see runtime.protocol)
    GET  /metrics                    Prometheus text: requests, errors, queue depth, batch sizes, latencies
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import request_response

from askexpert.runtime.protocol import (
    NPY,
    OCTET,
    SHAPE_HEADER,
    ExpertInfo,
    HealthResponse,
    InferResponse,
    ProtocolError,
    decode_images,
)
from askexpert.serving.batcher import DynamicBatcher
from askexpert.serving.pool import ExpertPool

_MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": f"A uint8 [N, C, H, W] image batch: raw bytes ({OCTET}, with header {SHAPE_HEADER}: N,C,H,W) "
                       f"or a .npy file ({NPY}). C, H, W must match the expert's input_shape.",
        "content": {OCTET: {"schema": {"type": "string", "format": "binary"}},
                    NPY: {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [{"name": SHAPE_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "N,C,H,W of a raw octet-stream body"}],
}


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("askexpert_requests_total", "Inference requests", ["expert"], registry=r)
        self.images = Counter("askexpert_images_total", "Images answered", ["expert"], registry=r)
        self.errors = Counter("askexpert_errors_total", "Failed requests", ["expert", "reason"], registry=r)
        self.queue_depth = Gauge("askexpert_queue_depth", "Images waiting for a batch", ["expert"], registry=r)
        self.batch_size = Histogram("askexpert_batch_size", "Images per model batch", ["expert"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_ms = Histogram("askexpert_queue_ms", "Time a request waited for its batch (ms)", ["expert"],
                                  registry=r, buckets=_MS_BUCKETS)
        self.compute_ms = Histogram("askexpert_compute_ms", "Model time per batch (ms)", ["expert"], registry=r,
                                    buckets=_MS_BUCKETS)
        self.request_ms = Histogram("askexpert_request_ms", "Server time per request (ms)", ["expert"], registry=r,
                                    buckets=_MS_BUCKETS)


def _with_infer_docs(schema: dict) -> dict:
    """Add the OpenAPI entry of the (plain Starlette) infer endpoint, with the InferResponse schema."""
    ref = "#/components/schemas/{model}"
    full = InferResponse.model_json_schema(ref_template=ref)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(full.pop("$defs", {}))
    components["InferResponse"] = full
    ok = {"description": "answers and server timings",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}}}}
    schema["paths"]["/v1/experts/{expert_id}/infer"] = {"post": {
        "summary": "Answer a batch of images with one expert",
        "operationId": "infer",
        "parameters": [
            {"name": "expert_id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "expert id (see /v1/experts), or 'general'"},
            {"name": "topk", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3}},
            *_INFER_BODY["parameters"]],
        "requestBody": _INFER_BODY["requestBody"],
        "responses": {"200": ok, "400": {"description": "malformed body or wrong image shape"},
                      "404": {"description": "no such expert"}, "415": {"description": "unsupported content type"},
                      "422": {"description": "invalid topk"}, "500": {"description": "the expert failed"}}}}
    return schema


def _error(status: int, detail: str) -> Response:
    return Response(json.dumps({"detail": detail}), status_code=status, media_type="application/json")


@dataclass
class _ExpertMetrics:
    """One expert's labelled metric children, looked up once (``labels()`` locks and hashes every call)."""

    requests: object
    images: object
    queue_depth: object
    queue_ms: object
    request_ms: object


def create_app(pool: ExpertPool, *, max_batch: int = 64, max_wait_ms: float = 0.0) -> InferFastPath:
    """The ASGI application serving ``pool`` (FastAPI behind :class:`InferFastPath`), one dynamic batcher
    per expert."""
    metrics = Metrics()
    per_expert = {key: _ExpertMetrics(metrics.requests.labels(key), metrics.images.labels(key),
                                      metrics.queue_depth.labels(key), metrics.queue_ms.labels(key),
                                      metrics.request_ms.labels(key)) for key in pool.ids()}
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="askexpert-model")
    batchers: dict[str, DynamicBatcher] = {}
    for key in pool.ids():
        def run(images, key=key):
            return pool.infer(key, images)

        def on_batch(size: int, seconds: float, key=key) -> None:
            metrics.batch_size.labels(key).observe(size)
            metrics.compute_ms.labels(key).observe(seconds * 1000)

        batchers[key] = DynamicBatcher(run, executor=executor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                       on_batch=on_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="askexpert expert server", version="1", lifespan=lifespan,
                  description="Near-edge experts for collaborative ViT inference. Wire format: see "
                              "askexpert.runtime.protocol and docs/protocol.md.")
    infos = {key: pool.get(key).info() for key in pool.ids()}

    @app.get("/v1/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        return HealthResponse(status="ok", experts=len(infos), device=str(pool.device), system_id=pool.system_id)

    @app.get("/v1/experts", response_model=list[ExpertInfo])
    def experts() -> list[ExpertInfo]:
        return list(infos.values())

    async def infer(request: Request) -> Response:
        """POST /v1/experts/{expert_id}/infer: a plain Starlette endpoint (FastAPI's parameter machinery
        costs a noticeable share of a loopback request); its OpenAPI entry is added in ``openapi`` below."""
        started = time.perf_counter()
        expert_id = request.path_params["expert_id"]
        if expert_id not in batchers:
            metrics.errors.labels("unknown", "no_such_expert").inc()
            return _error(404, f"no expert {expert_id!r}; this server has: {', '.join(batchers)}")
        try:
            topk = int(request.query_params.get("topk", 3))
        except ValueError:
            topk = 0
        if not 1 <= topk <= 1000:
            return _error(422, "topk must be an integer from 1 to 1000")
        m = per_expert[expert_id]
        m.requests.inc()
        body = await request.body()
        try:
            images = decode_images(body, request.headers.get("content-type"), request.headers.get(SHAPE_HEADER))
        except ProtocolError as err:
            reason = "content_type" if "content type" in str(err) else "bad_body"
            metrics.errors.labels(expert_id, reason).inc()
            return _error(415 if reason == "content_type" else 400, str(err))
        expected = infos[expert_id].input_shape
        if list(images.shape[1:]) != expected:
            metrics.errors.labels(expert_id, "bad_shape").inc()
            return _error(400, f"expert {expert_id} takes images of shape {expected} (C, H, W), "
                               f"got {list(images.shape[1:])}")
        batcher = batchers[expert_id]
        m.queue_depth.set(batcher.depth + len(images))
        try:
            output, timings = await batcher.submit(images)
        except Exception as err:
            metrics.errors.labels(expert_id, "model").inc()
            return _error(500, f"expert {expert_id} failed: {type(err).__name__}: {err}")
        finally:
            m.queue_depth.set(batcher.depth)
        m.images.inc(len(images))
        m.queue_ms.observe(timings.queue_ms)
        # the body follows InferResponse (the documented response model), built from plain values and
        # serialised once
        payload = {"expert": expert_id, "results": output.result_dicts(topk),
                   "timings": {"queue_ms": timings.queue_ms, "compute_ms": timings.compute_ms,
                               "batch_size": timings.batch_size}}
        m.request_ms.observe((time.perf_counter() - started) * 1000)
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    app.router.add_route("/v1/experts/{expert_id}/infer", infer, methods=["POST"])

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _with_infer_docs(get_openapi(title=app.title, version=app.version,
                                                              description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.pool = pool
    app.state.metrics = metrics
    return InferFastPath(app, request_response(infer))


_INFER_PATH = re.compile(r"^/v1/experts/(?P<expert_id>[^/]+)/infer$")


class InferFastPath:
    """The ASGI app ``askexpert serve`` runs: ``POST /v1/experts/{id}/infer`` goes straight to its
    endpoint, everything else (health, experts, metrics, docs, lifespan) to the FastAPI app.

    The infer request is the hot path, and the endpoint needs none of FastAPI's middleware layers
    (exception, body-limit, telemetry, exit-stack): it answers every failure itself as the documented
    JSON. Its gain alone was not separable from this VM's noise (BENCHMARKS.md, "Serving overhead").
    """

    def __init__(self, app: FastAPI, infer: Callable) -> None:
        self.app, self.infer = app, infer

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.match(scope["path"])
            if match is not None:
                scope["path_params"] = match.groupdict()
                scope["app"] = self.app
                await self.infer(scope, receive, send)
                return
        await self.app(scope, receive, send)
