"""The expert server's Open Inference Protocol face (KServe's v2, :mod:`askexpert.contract.oip`), beside ``/v1``:
the same experts, batches, limits and metrics, so Triton's and KServe's clients (``tritonclient.http``) and
askexpert's own OIP edge client can ask it.

    GET  /v2                                        server metadata (name, version, extensions)
    GET  /v2/health/live, /v2/health/ready          200 while the server is up
    GET  /v2/models/{name}[/versions/1]             model metadata: tensors, the bundle's id in parameters
    GET  /v2/models/{name}[/versions/1]/ready       200 (404: no such model or version)
    POST /v2/models/{name}[/versions/1]/infer       images in (JSON or binary extension), logits out

Models are ``expert-<id>`` and ``general`` (:func:`~askexpert.contract.oip.model_name`), version ``1``. An
answer's ``logits`` are the expert's log-probabilities times its temperature (its logits up to a constant per
image: the edge's softmax at that temperature gives back the server's probabilities), with the server's
timings in its ``parameters``. Every error is OIP's ``{"error": ...}`` with a 4xx or 5xx status.
"""

from __future__ import annotations

import re
import time

from fastapi import FastAPI, Response
from starlette.requests import ClientDisconnect

from askexpert import __version__
from askexpert.contract import oip
from askexpert.serving.http_body import Refusal, error_response, read_body

_PLATFORM = "askexpert"
_EXTENSIONS = ["binary_tensor_data"]
INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(/versions/(?P<version>[^/]+))?/infer$")


def _json_bytes_limit(raw_limit: int) -> int:
    """A body limit for OIP requests: JSON data spends up to four bytes an image byte ("255,")."""
    return 4 * raw_limit + 65536


class OipModels:
    """Which OIP model names this server answers, and the expert each stands for."""

    def __init__(self, experts) -> None:
        self.experts = experts
        self.by_name = {oip.model_name(key): key for key in experts.infos}

    def key(self, name: str, version: str | None) -> str:
        """The expert behind model ``name`` at ``version`` (None: the latest), or a 404 refusal."""
        key = self.by_name.get(name)
        if key is None:
            raise Refusal(404, "no_such_expert", f"no model {name!r}; this server has: {', '.join(self.by_name)}")
        if version is not None and version != oip.VERSION:
            raise Refusal(404, "no_such_expert", f"model {name!r} has version {oip.VERSION} only, not {version!r}")
        return key

    def metadata(self, name: str, version: str | None) -> dict:
        info = self.experts.infos[self.key(name, version)]
        outputs = len(info.classes) + (1 if info.has_other else 0)
        return oip.model_metadata(name, info.input_shape, outputs, platform=_PLATFORM,
                                  system_id=self.experts.system_id)


_NOT_FOUND = {"description": "no such model, or no such version of it", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}


def add_routes(app: FastAPI, models: OipModels) -> None:
    """The OIP's health and metadata routes on ``app`` (inference goes through :class:`OipInfer`)."""

    def refused(err: Refusal) -> Response:
        return error_response(err.status, err.detail, key="error")

    @app.get("/v2", include_in_schema=True, summary="Open Inference Protocol: server metadata")
    def server_metadata() -> dict:
        return {"name": "askexpert", "version": __version__, "extensions": _EXTENSIONS}

    @app.get("/v2/health/live", summary="Open Inference Protocol: the server is live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: the server is ready")
    def ready() -> dict:
        return {"ready": True}

    def model(name: str, version: str | None = None):
        try:
            return models.metadata(name, version)
        except Refusal as err:
            return refused(err)

    def model_ready(name: str, version: str | None = None):
        try:
            models.key(name, version)
        except Refusal as err:
            return refused(err)
        return {"name": name, "ready": True}

    for path, endpoint, summary in (("/v2/models/{name}", model, "model metadata"),
                                    ("/v2/models/{name}/versions/{version}", model, "model metadata"),
                                    ("/v2/models/{name}/ready", model_ready, "the model is ready"),
                                    ("/v2/models/{name}/versions/{version}/ready", model_ready, "the model is ready")):
        app.add_api_route(path, endpoint, methods=["GET"], summary=f"Open Inference Protocol: {summary}",
                          responses={404: _NOT_FOUND})


class OipInfer:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` as a bare ASGI endpoint, beside ``/v1``'s
    (:class:`~askexpert.serving.app.InferEndpoint`): ``answer`` is that endpoint's way to an expert's output
    (its batches and refusals), so both protocols share batching, limits and metrics."""

    def __init__(self, models: OipModels, answer, per_expert: dict, metrics, body_limits: dict[str, int],
                 limits) -> None:
        self.models, self.answer, self.per_expert, self.metrics = models, answer, per_expert, metrics
        self.body_limits = {k: _json_bytes_limit(v) for k, v in body_limits.items()}
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        started = time.perf_counter()
        params = scope["path_params"]
        key = None
        try:
            key = self.models.key(params["model"], params.get("version"))
            m = self.per_expert[key]
            header_length = declared = None
            for name, value in scope["headers"]:
                if name == b"inference-header-content-length" and header_length is None:
                    header_length = value.decode("latin-1")
                elif name == b"content-length" and declared is None:
                    declared = value.decode("latin-1")
            m.requests.inc()
            body = await read_body(receive, declared, self.body_limits[key], self.limits.body_timeout_s)
            try:
                shape = self.models.experts.infos[key].input_shape
                images, header = oip.read_request(body, header_length, expect=shape,
                                                  max_images=self.limits.max_images)
            except oip.OipError as err:
                raise Refusal(err.status, "bad_body", str(err)) from err
            output, timings = await self.answer(key, images, m)
            temperature = self.models.experts.infos[key].temperature
            data, headers = oip.infer_response(
                params["model"], oip.scaled_log_probs(output.probs.numpy(), temperature),
                request_id=header.get("id") if isinstance(header.get("id"), str) else None,
                binary=oip.wants_binary(header),
                parameters={"queue_ms": timings.queue_ms, "compute_ms": timings.compute_ms,
                            "batch_size": timings.batch_size})
        except Refusal as refusal:
            if refusal.reason is not None:
                self.metrics.errors.labels(key or "unknown", refusal.reason).inc()
            await error_response(refusal.status, refusal.detail, refusal.headers, key="error")(scope, receive, send)
            return
        except ClientDisconnect:
            self.metrics.errors.labels(key, "disconnect").inc()
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                    + [(b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
        m.images.inc(len(images))
        m.queue_ms.observe(timings.queue_ms)
        m.request_ms.observe((time.perf_counter() - started) * 1000)
