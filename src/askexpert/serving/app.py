"""The expert server's HTTP face (FastAPI): transport only; the models live behind an :class:`Experts`
backend: :mod:`.local` (this process, served by uvicorn) or :mod:`.ray_app` (Ray Serve deployments).

    GET  /v1/health                  liveness, number of experts, device
    GET  /v1/experts                 every expert: id, classes, model, input shape
    POST /v1/experts/{id}/infer      a batch of images -> answers + server timings (see contract.protocol)
    GET  /metrics                    Prometheus text: requests, errors, queue depth, batch sizes, latencies
    /v2/...                          the same experts over the Open Inference Protocol (:mod:`.oip`)

Every request passes :class:`Guard` first (bearer token, a cap on requests in flight); the infer
endpoint then reads its body under a size limit and a time limit before decoding it. Every error,
the client's or the server's, is the documented JSON ``{"detail": ...}`` (``{"error": ...}`` under ``/v2``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse

from askexpert.contract.codecs import FORMATS
from askexpert.contract.protocol import (
    MAX_IMAGES,
    NPY,
    OCTET,
    SHAPE_HEADER,
    ExpertInfo,
    HealthResponse,
    InferResponse,
    ProtocolError,
    decode_images,
    infer_response,
    max_body_bytes,
)
from askexpert.contract.reroute import Reroute, RerouteError, parse_next, settle
from askexpert.serving.batcher import BatchTimings
from askexpert.serving.http_body import Refusal, error_response, read_body
from askexpert.serving.oip import INFER_PATH as OIP_INFER_PATH
from askexpert.serving.oip import OipInfer, OipModels
from askexpert.serving.oip import add_routes as add_oip_routes
from askexpert.serving.pool import ExpertOutput

log = logging.getLogger("askexpert.server")
_MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": f"A uint8 [N, C, H, W] image batch: raw bytes ({OCTET}, with header {SHAPE_HEADER}: N,C,H,W) "
                       f"a .npy file ({NPY}), or the images stacked top to bottom in one PNG, JPEG or WebP picture "
                       f"({', '.join(FORMATS)}; its size is checked before it is decoded). C, H, W must match the "
                       "expert's input_shape.",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in (OCTET, NPY, *FORMATS)},
    },
    "parameters": [{"name": SHAPE_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "N,C,H,W of a raw octet-stream body (and of a picture of several images)"}],
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
        self.reroutes = Counter("askexpert_reroutes_total", "Images re-asked of another expert within their request",
                                ["expert", "to"], registry=r)


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
            {"name": "next", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "the generalist's ranking of the other experts (comma-separated ids): a server whose "
                            "bundle re-routes asks them in turn when the routed expert says 'other'"},
            *_INFER_BODY["parameters"]],
        "requestBody": _INFER_BODY["requestBody"],
        "responses": {"200": ok, "400": _ERROR_DOC("malformed body or wrong image shape"),
                      "404": _ERROR_DOC("no such expert"),
                      "408": _ERROR_DOC("the body did not arrive within the server's body timeout"),
                      "413": _ERROR_DOC("body larger than the most images a request may carry"),
                      "415": _ERROR_DOC("unsupported content type"), "422": _ERROR_DOC("invalid topk"),
                      "500": _ERROR_DOC("the expert failed")}}}
    for name, path in schema["paths"].items():  # every route: the guard's answers (OIP's error body under /v2)
        for op in path.values():
            op.setdefault("responses", {}).update(_OIP_GUARD_RESPONSES if name.startswith("/v2") else _GUARD_RESPONSES)
    return schema


def _ERROR_DOC(description: str, key: str = "detail") -> dict:  # noqa: N802 (reads as a constant in the schema)
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "properties": {key: {"type": "string"}}, "required": [key]}}}}


_PROTOCOL_STATUS = {"content_type": 415, "bad_body": 400}
_GUARD = {"401": "no bearer token (the server was started with one)", "403": "wrong bearer token",
          "503": "too many requests in flight: retry after the Retry-After header's seconds"}
_GUARD_RESPONSES = {status: _ERROR_DOC(text) for status, text in _GUARD.items()}
_OIP_GUARD_RESPONSES = {status: _ERROR_DOC(text, "error") for status, text in _GUARD.items()}


@dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of the server. ``max_body_bytes`` None: ``max_images`` images of the
    expert's input shape (raw or ``.npy``), per expert."""

    max_images: int = MAX_IMAGES  # images a request may carry (split into max_batch batches inside)
    max_body_bytes: int | None = None
    body_timeout_s: float = 10.0  # a body must arrive whole within this (slow or half-sent bodies: 408)
    max_in_flight: int = 256  # requests being read, queued or computed; beyond: 503 + Retry-After
    retry_after_s: int = 1


class Guard:
    """The server's outer ASGI layer: the bearer token (401 without, 403 wrong; compared in constant time),
    a cap on requests in flight (503 with Retry-After beyond it), and a JSON 500 for anything unforeseen
    (never a plain-text one, which a client cannot parse)."""

    def __init__(self, app, *, token: str | None, max_in_flight: int, retry_after_s: int,
                 on_refusal: Callable[[str], None] = lambda reason: None) -> None:
        self.app, self.max_in_flight, self.retry_after_s = app, max_in_flight, retry_after_s
        self.expected = f"Bearer {token}".encode() if token else None
        self.on_refusal = on_refusal  # counts each refusal by reason (the server's Prometheus errors)
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = "error" if scope["path"].startswith("/v2") else "detail"  # OIP's error body, or askexpert's
        if self.expected is not None:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            if given is None:
                self.on_refusal("unauthorized")
                await error_response(401, "this server needs a bearer token: send 'Authorization: Bearer TOKEN' "
                             "(askexpert edge --token-file FILE, or ASKEXPERT_TOKEN)",
                             {"WWW-Authenticate": "Bearer"}, key=key)(scope, receive, send)
                return
            if not hmac.compare_digest(given, self.expected):
                self.on_refusal("forbidden")
                await error_response(403, "wrong bearer token",
                             {"WWW-Authenticate": 'Bearer error="invalid_token"'}, key=key)(scope, receive, send)
                return
        if self.in_flight >= self.max_in_flight:
            self.on_refusal("overloaded")
            await error_response(503, f"the server has {self.in_flight} requests in flight, its limit: retry later",
                         {"Retry-After": str(self.retry_after_s), "Connection": "close"}, key=key)(scope, receive, send)
            return
        self.in_flight += 1
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as err:
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            self.on_refusal("internal")
            if not started:
                await error_response(500, f"internal error: {type(err).__name__}: {err}", key=key)(scope, receive, send)
        finally:
            self.in_flight -= 1


class Experts(Protocol):
    """What the HTTP face needs of the models behind it: the uvicorn server's :class:`.local.LocalExperts`
    (an expert pool in this process) or the Ray backend's :class:`.ray_app.RayExperts` (deployment handles)."""

    infos: dict[str, ExpertInfo]  # every expert this server answers for, by id
    device: str
    system_id: str | None
    reroute: Reroute | None  # the bundle's re-routing rule (None: the routed expert's answer stands)
    on_batch: Callable[[str, int, float], None] | None  # (expert, images, seconds) after each model batch

    def depth(self, key: str) -> int:
        """Images of ``key`` waiting for a model batch (as far as this process knows)."""

    async def submit(self, key: str, images: np.ndarray) -> tuple[ExpertOutput, BatchTimings]:
        """Expert ``key``'s answers for a ``uint8 [N, C, H, W]`` batch, with the server's timings."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class _ExpertMetrics:
    """One expert's labelled metric children, looked up once (``labels()`` locks and hashes every call)."""

    requests: object
    images: object
    queue_depth: object
    queue_ms: object
    request_ms: object


def _observe(metrics: Metrics, experts: Experts) -> dict[str, _ExpertMetrics]:
    """Every expert's labelled metrics, and the backend told to count each model batch it runs."""
    per_expert = {key: _ExpertMetrics(metrics.requests.labels(key), metrics.images.labels(key),
                                      metrics.queue_depth.labels(key), metrics.queue_ms.labels(key),
                                      metrics.request_ms.labels(key)) for key in experts.infos}
    batch_metrics = {key: (metrics.batch_size.labels(key), metrics.compute_ms.labels(key)) for key in experts.infos}

    def on_batch(key: str, size: int, seconds: float) -> None:
        sizes, times = batch_metrics[key]
        sizes.observe(size)
        times.observe(seconds * 1000)

    experts.on_batch = on_batch
    return per_expert


def create_app(experts: Experts, *, limits: ServerLimits | None = None, token: str | None = None,
               reroute: Reroute | None = None) -> Guard:
    """The ASGI application serving ``experts``: :class:`Guard`, then :class:`InferFastPath` (the infer
    endpoint) and FastAPI (the rest). Both backends serve this same application, so they share one
    HTTP contract (routes, wire format, OpenAPI schema, metrics, limits) and re-route alike: ``reroute``
    (the bundle's rule, :mod:`askexpert.contract.reroute`) applies to requests that carry ``next``."""
    limits = limits or ServerLimits()
    metrics = Metrics()
    infos = experts.infos
    per_expert = _observe(metrics, experts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await experts.start()
        yield
        await experts.stop()
        log.info("stopped: every expert's queue answered or refused, the workers shut down")

    app = FastAPI(title="askexpert expert server", version="1", lifespan=lifespan,
                  description="Near-edge experts for collaborative ViT inference. Wire format: see "
                              "askexpert.contract.protocol and docs/protocol.md.")
    body_limits = {key: limits.max_body_bytes or max_body_bytes([info.input_shape], limits.max_images)
                   for key, info in infos.items()}

    @app.get("/v1/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        return HealthResponse(status="ok", experts=len(infos), device=experts.device, system_id=experts.system_id)

    @app.get("/v1/experts", response_model=list[ExpertInfo])
    def expert_list() -> list[ExpertInfo]:
        return list(infos.values())

    infer = InferEndpoint(experts, per_expert, metrics, body_limits, limits,
                          reroute if reroute is not None else getattr(experts, "reroute", None))
    app.router.add_route("/v1/experts/{expert_id}/infer", infer, methods=["POST"])

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _with_infer_docs(get_openapi(title=app.title, version=app.version,
                                                              description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.experts = experts
    app.state.metrics = metrics
    models = OipModels(experts)
    add_oip_routes(app, models)
    oip_infer = OipInfer(models, infer.answer, per_expert, metrics, body_limits, limits)
    guard = Guard(InferFastPath(app, infer, oip_infer), token=token, max_in_flight=limits.max_in_flight,
                  retry_after_s=limits.retry_after_s,
                  on_refusal=lambda reason: metrics.errors.labels("-", reason).inc())
    return guard


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # what json.dumps(...) would write
_SHAPE = SHAPE_HEADER.lower().encode()
_JSON_HEADERS = (b"content-type", b"application/json")


class InferEndpoint:
    """``POST /v1/experts/{expert_id}/infer``, the hot path of every offload, as a bare ASGI endpoint:
    the request's headers read in one pass over the scope, the body straight from ``receive``, the
    answer written as two ASGI messages, and the metrics that the client does not wait for (images,
    queue and request times, queue depth) updated after the answer has gone. Every failure is the
    documented JSON ``{"detail": ...}``; the OpenAPI entry is added in :func:`_with_infer_docs`."""

    def __init__(self, experts: Experts, per_expert: dict[str, _ExpertMetrics], metrics: Metrics,
                 body_limits: dict[str, int], limits: ServerLimits, reroute: Reroute | None = None) -> None:
        self.experts, self.per_expert, self.metrics = experts, per_expert, metrics
        self.body_limits, self.limits = body_limits, limits
        self.reroute = reroute if reroute is not None and reroute.active else None

    async def __call__(self, scope, receive, send) -> None:
        started = time.perf_counter()
        expert_id = scope["path_params"]["expert_id"]
        try:
            m = self._expert(expert_id)
            topk, ranking = _query(scope["query_string"])
            if not 1 <= topk <= 1000:
                raise Refusal(422, None, "topk must be an integer from 1 to 1000")
            images = await self._images(scope, receive, expert_id, m)
            output, timings = await self.answer(expert_id, images, m)
            results = output.result_dicts(topk)
            if ranking is not None and self.reroute is not None:
                results = await self._rerouted(expert_id, ranking, images, results, timings, topk)
        except Refusal as refusal:
            if refusal.reason is not None:
                self.metrics.errors.labels(expert_id if expert_id in self.per_expert else "unknown",
                                           refusal.reason).inc()
            await error_response(refusal.status, refusal.detail, refusal.headers)(scope, receive, send)
            return
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            self.metrics.errors.labels(expert_id, "disconnect").inc()
            log.info("a client disconnected while sending a request to expert %s", expert_id)
            return
        # the body follows InferResponse (the documented response model), built from plain values and
        # serialised once
        data = _JSON(infer_response(expert_id, results, timings.queue_ms, timings.compute_ms,
                                    timings.batch_size)).encode()
        elapsed_ms = (time.perf_counter() - started) * 1000
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON_HEADERS, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
        # what the client does not wait for
        m.images.inc(len(images))
        m.queue_ms.observe(timings.queue_ms)
        m.request_ms.observe(elapsed_ms)
        m.queue_depth.set(self.experts.depth(expert_id))

    async def _rerouted(self, expert_id: str, ranking: list[str], images: np.ndarray, first: list[dict],
                        timings: BatchTimings, topk: int) -> list[dict]:
        """Every image's answer under the bundle's re-routing rule: the images whose routed expert said "other"
        (or answered under the rule's confidence) asked of the next expert of their chain, in turn, within this
        request; each result names the expert that answered and lists every try (contract.reroute)."""
        rule = self.reroute
        shape = self.experts.infos[expert_id].input_shape
        chain = [e for e in rule.chain(expert_id, ranking)
                 if e in self.per_expert and self.experts.infos[e].input_shape == shape]  # held here, same input
        answers = [[r] for r in first]
        tries = [[_try(expert_id, r, timings)] for r in first]
        pending = [i for i, r in enumerate(first) if rule.retry(r["pred"], r["confidence"])]
        for nxt in chain[1:]:
            if not pending:
                break
            self.metrics.reroutes.labels(expert_id, nxt).inc(len(pending))
            output, t = await self.answer(nxt, images[pending], self.per_expert[nxt])
            still = []
            for i, r in zip(pending, output.result_dicts(topk), strict=True):
                answers[i].append(r)
                tries[i].append(_try(nxt, r, t))
                if rule.retry(r["pred"], r["confidence"]):
                    still.append(i)
            pending = still
        results = []
        for said, asked in zip(answers, tries, strict=True):
            stands = settle(rule, [(r["pred"], r["confidence"]) for r in said])
            results.append({**said[stands], "expert": asked[stands]["expert"], "tries": asked})
        return results

    def _expert(self, expert_id: str) -> _ExpertMetrics:
        m = self.per_expert.get(expert_id)
        if m is None:
            raise Refusal(404, "no_such_expert", f"no expert {expert_id!r}; this server has: "
                          f"{', '.join(self.experts.infos)}")
        return m

    async def _images(self, scope, receive, expert_id: str, m: _ExpertMetrics) -> np.ndarray:
        """The request's images, read under the expert's body limit and the body timeout, decoded and
        checked against the expert's input shape."""
        content_type = declared = shape = None
        for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
            if name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-length" and declared is None:
                declared = value.decode("latin-1")
            elif name == _SHAPE and shape is None:
                shape = value.decode("latin-1")
        m.requests.inc()
        # a refused body is answered at once: the rest of it is not read, and the connection closes
        body = await read_body(receive, declared, self.body_limits[expert_id], self.limits.body_timeout_s)
        expected = self.experts.infos[expert_id].input_shape
        try:
            images = decode_images(body, content_type, shape, max_images=self.limits.max_images, expect=expected)
        except ProtocolError as err:
            raise Refusal(_PROTOCOL_STATUS[err.reason], err.reason, str(err)) from err
        if list(images.shape[1:]) != expected:
            raise Refusal(400, "bad_shape", f"expert {expert_id} takes images of shape {expected} (C, H, W), "
                          f"got {list(images.shape[1:])}")
        return images

    async def answer(self, expert_id: str, images: np.ndarray, m: _ExpertMetrics) -> tuple[ExpertOutput, BatchTimings]:
        """The expert's output for ``images`` (queued into its batches), refused when the model fails."""
        experts = self.experts
        m.queue_depth.set(experts.depth(expert_id) + len(images))
        try:
            output, timings = await experts.submit(expert_id, images)
        except Exception as err:
            m.queue_depth.set(experts.depth(expert_id))
            raise Refusal(500, "model", f"expert {expert_id} failed: {type(err).__name__}: {err}") from err
        if not output.finite():  # standard JSON: a model that produced NaN is the server's failure
            m.queue_depth.set(experts.depth(expert_id))
            raise Refusal(500, "non_finite", f"expert {expert_id} produced non-finite probabilities")
        return output, timings


def _query(query: bytes) -> tuple[int, list[str] | None]:
    """The ``topk`` query parameter (the last one given, as Starlette reads it; 3 when absent; 0 when it is not
    an integer) and ``next``, the generalist's ranking of the other experts (None when absent)."""
    if not query:
        return 3, None
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    ranking = None
    if "next" in params:
        try:
            ranking = parse_next(params["next"])
        except RerouteError as err:
            raise Refusal(422, None, str(err)) from err
    try:
        return int(params.get("topk", "3")), ranking
    except ValueError:
        return 0, ranking


def _try(expert: str, result: dict, timings: BatchTimings) -> dict:
    """One try of a re-routed image (:class:`~askexpert.contract.protocol.TryResult`) as plain values."""
    return {"expert": expert, "pred": result["pred"], "confidence": result["confidence"],
            "queue_ms": timings.queue_ms, "compute_ms": timings.compute_ms, "batch_size": timings.batch_size}


_INFER_PATH = re.compile(r"^/v1/experts/(?P<expert_id>[^/]+)/infer$")


class InferFastPath:
    """The ASGI app ``askexpert serve`` runs: ``POST /v1/experts/{id}/infer`` and the OIP's
    ``POST /v2/models/{name}[/versions/{v}]/infer`` go straight to their endpoints, everything else (health,
    experts, metadata, metrics, docs, lifespan) to the FastAPI app.

    The infer request is the hot path, and its endpoints (:class:`InferEndpoint`, :class:`~.oip.OipInfer`)
    need none of FastAPI's middleware layers (exception, body-limit, telemetry, exit-stack): they answer every
    failure themselves as their protocol's JSON (benchmarks/topics/serving.md, "The offload hot path").
    """

    def __init__(self, app: FastAPI, infer: Callable, oip_infer: Callable | None = None) -> None:
        self.app, self.infer, self.oip_infer = app, infer, oip_infer

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.match(scope["path"])
            if match is not None:
                scope["path_params"] = match.groupdict()
                await self.infer(scope, receive, send)
                return
            match = OIP_INFER_PATH.match(scope["path"]) if self.oip_infer is not None else None
            if match is not None:
                scope["path_params"] = match.groupdict()
                await self.oip_infer(scope, receive, send)
                return
        await self.app(scope, receive, send)
