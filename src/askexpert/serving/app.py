"""The expert server's HTTP face (FastAPI): transport only; the models live in :mod:`.pool`.

    GET  /v1/health                  liveness, number of experts, device
    GET  /v1/experts                 every expert: id, classes, model, input shape
    POST /v1/experts/{id}/infer      a batch of images -> answers + server timings (see runtime.protocol)
    GET  /metrics                    Prometheus text: requests, errors, queue depth, batch sizes, latencies
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from askexpert.runtime.protocol import (
    NPY,
    OCTET,
    SHAPE_HEADER,
    ExpertInfo,
    HealthResponse,
    InferResponse,
    ProtocolError,
    ServerTimings,
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


def create_app(pool: ExpertPool, *, max_batch: int = 64, max_wait_ms: float = 0.0) -> FastAPI:
    """The FastAPI application serving ``pool``, one dynamic batcher per expert."""
    metrics = Metrics()
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
        return HealthResponse(status="ok", experts=len(infos), device=str(pool.device))

    @app.get("/v1/experts", response_model=list[ExpertInfo])
    def experts() -> list[ExpertInfo]:
        return list(infos.values())

    @app.post("/v1/experts/{expert_id}/infer", response_model=InferResponse, openapi_extra=_INFER_BODY,
              responses={400: {"description": "malformed body"}, 404: {"description": "no such expert"},
                         415: {"description": "unsupported content type"}})
    async def infer(request: Request, expert_id: str = Path(description="expert id, or 'general'"),
                    topk: int = Query(3, ge=1, le=1000)) -> InferResponse:
        started = time.perf_counter()
        if expert_id not in batchers:
            metrics.errors.labels("unknown", "no_such_expert").inc()
            raise HTTPException(404, f"no expert {expert_id!r}; this server has: {', '.join(batchers)}")
        metrics.requests.labels(expert_id).inc()
        body = await request.body()
        try:
            images = decode_images(body, request.headers.get("content-type"), request.headers.get(SHAPE_HEADER))
        except ProtocolError as err:
            reason = "content_type" if "content type" in str(err) else "bad_body"
            metrics.errors.labels(expert_id, reason).inc()
            raise HTTPException(415 if reason == "content_type" else 400, str(err)) from err
        expected = infos[expert_id].input_shape
        if list(images.shape[1:]) != expected:
            metrics.errors.labels(expert_id, "bad_shape").inc()
            raise HTTPException(400, f"expert {expert_id} takes images of shape {expected} (C, H, W), "
                                     f"got {list(images.shape[1:])}")
        batcher = batchers[expert_id]
        metrics.queue_depth.labels(expert_id).set(batcher.depth + len(images))
        try:
            output, timings = await batcher.submit(images)
        except Exception as err:
            metrics.errors.labels(expert_id, "model").inc()
            raise HTTPException(500, f"expert {expert_id} failed: {type(err).__name__}: {err}") from err
        finally:
            metrics.queue_depth.labels(expert_id).set(batcher.depth)
        metrics.images.labels(expert_id).inc(len(images))
        metrics.queue_ms.labels(expert_id).observe(timings.queue_ms)
        metrics.request_ms.labels(expert_id).observe((time.perf_counter() - started) * 1000)
        return InferResponse(expert=expert_id, results=output.results(topk),
                             timings=ServerTimings(queue_ms=timings.queue_ms, compute_ms=timings.compute_ms,
                                                   batch_size=timings.batch_size))

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.pool = pool
    app.state.metrics = metrics
    return app
