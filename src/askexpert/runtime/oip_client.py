"""The edge's client for experts on any Open Inference Protocol server (Triton, KServe, MLServer, OpenVINO Model
Server, or askexpert's own ``/v2``), torch-free: httpx and NumPy.

Each offload is one ``POST /v2/models/expert-<id>/versions/1/infer`` with the images as a ``UINT8`` tensor in
the binary tensor data extension; the answer's ``logits`` become the expert's calibrated probabilities at the
temperature the bundle records, then its answer, "other" and top-k (:func:`~askexpert.contract.oip.answers`,
:func:`~askexpert.contract.protocol.image_results`): the same answers askexpert's ``/v1`` gives. What the
experts are (classes, temperature, input) comes from the bundle, not the server.

Pinning: before any image is sent, every expert's model must name this bundle's system id, in its metadata's
``parameters`` (askexpert's server) or its model configuration's (``GET /v2/models/{name}/config``: a Triton
serving ``askexpert export triton``'s repository). A server that cannot show it is refused unless the edge is
told to trust it (the security group's ``trust_unpinned``). Deadlines, retries, "marked down" and degradation
are the ``/v1`` client's (:class:`~askexpert.runtime.clients.HttpExpertClient`). Re-routing on the server is
``/v1``'s alone.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np

from askexpert.contract import oip
from askexpert.contract.bundle import System
from askexpert.contract.labels import OTHER
from askexpert.contract.protocol import ExpertInfo, HealthResponse, image_results
from askexpert.runtime.clients import ExpertReply, ExpertUnavailable, HttpExpertClient
from askexpert.runtime.settings import Connection, Security


def _json_object(raw: bytes) -> dict:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def bundle_experts(system: System) -> list[ExpertInfo]:
    """The experts as the bundle records them (what an OIP server cannot say: classes, temperature)."""
    return [ExpertInfo(id=e.id, classes=list(e.classes), class_names=list(e.class_names), has_other=e.has_other,
                       model=str(e.model.get("name", "")), timm_name=str(e.model.get("timm_name", "")),
                       parameters=e.parameters, input_shape=e.input_shape, temperature=e.temperature)
            for e in system.manifest.experts]


class OipExpertClient(HttpExpertClient):
    """The experts of a bundle on an OIP server (module docstring); the ``/v1`` client's keywords apply."""

    def __init__(self, base_url: str, experts: list[ExpertInfo], connection: Connection = Connection(),
                 security: Security = Security(), **kw) -> None:
        super().__init__(base_url, connection, security, **kw)
        self.infos = {e.id: e for e in experts}
        self.output_ids = {e.id: [*e.classes, *([OTHER] if e.has_other else [])] for e in experts}
        self.trust_unpinned = security.trust_unpinned

    def experts(self) -> list[ExpertInfo]:
        """The bundle's experts whose models the server holds and says are ready."""
        self._ensure_trusted()
        return list(self.infos.values())

    def _served_system(self, name: str) -> str | None:
        """The system id model ``name`` carries (its metadata's parameters, else its configuration's)."""
        meta = self._parse(f"model {name}'s metadata", self._request("GET", f"/v2/models/{name}"), _json_object)
        served = (meta.get("parameters") or {}).get(oip.SYSTEM_PARAMETER)
        if served is None:
            try:
                config = _json_object(self._request("GET", f"/v2/models/{name}/config").content)
            except (ExpertUnavailable, ValueError):
                return None
            entry = (config.get("parameters") or {}).get(oip.SYSTEM_PARAMETER) or {}
            served = entry.get("string_value") if isinstance(entry, dict) else None
        return served if isinstance(served, str) else None

    def health(self) -> HealthResponse:
        """The server's readiness, with the system id its experts' models name (None when they do not)."""
        self._request("GET", "/v2/health/ready")
        first = next(iter(self.infos))
        return HealthResponse(status="ok", experts=len(self.infos), device="oip",
                              system_id=self._served_system(oip.model_name(first)))

    def _ensure_trusted(self) -> None:
        if self._trusted or self.is_down:
            return
        for expert in self.infos:
            name = oip.model_name(expert)
            try:
                served = self._served_system(name)
            except ExpertUnavailable as err:
                if err.status is None or err.status in (401, 403):
                    raise
                why = f"it has no model {name} (HTTP {err.status})"
            else:
                why = None if served == self.system_id or (served is None and self.trust_unpinned) else (
                    f"model {name} names no system (export the repository with askexpert export triton BUNDLE, "
                    "or trust the server: --trust-unpinned-server)" if served is None else
                    f"model {name} names system {served[:12]}, this bundle is system {self.system_id[:12]}")
            if why is not None:
                self._mark_down(f"{self.base_url} is not this system's OIP server ({why}): no image goes there -- "
                                "fix: serve this bundle's experts there (askexpert serve BUNDLE, or a Triton on "
                                "askexpert export triton BUNDLE)")
                raise ExpertUnavailable(self._down_why, server=self.base_url)
        self._trusted = True

    def infer(self, expert_id: str, images: np.ndarray, ranking: list[str] | None = None) -> ExpertReply:
        if ranking is not None:
            raise ExpertUnavailable("re-routing on the server needs askexpert's /v1 protocol (--server-protocol v1)",
                                    status=400, server=self.base_url)
        self._ensure_trusted()
        info = self.infos.get(expert_id)
        if info is None:
            raise ExpertUnavailable(f"expert {expert_id} is not in this bundle", status=404, server=self.base_url)
        t0 = time.perf_counter()
        body, headers = self.pacer.dilated(lambda: oip.infer_request(np.asarray(images)))
        t1 = time.perf_counter()
        url = self._urls.get(expert_id)
        if url is None:
            url = self._urls[expert_id] = httpx.URL(
                f"{self.base_url}/v2/models/{oip.model_name(expert_id)}/versions/{oip.VERSION}/infer")
        resp = self.pacer.dilated(lambda: self._request("POST", url, content=body, headers=headers))
        t2 = time.perf_counter()
        outputs, params = self._parse(f"expert {expert_id}'s answer", resp, lambda raw: oip.read_response(
            raw, resp.headers.get(oip.HEADER_LENGTH)))
        logits = outputs.get(oip.OUTPUT)
        n = len(self.output_ids[expert_id])
        if logits is None or logits.shape != (len(images), n):
            raise ExpertUnavailable(f"expert {expert_id}'s answer from {self.base_url} has no {oip.OUTPUT} tensor of "
                                    f"shape [{len(images)}, {n}] (got {None if logits is None else logits.shape}); "
                                    "is the server holding another model under its name?", server=self.base_url)
        results = image_results(oip.answers(logits, info.temperature), self.output_ids[expert_id], self.topk)
        link_ms = self._link_ms(len(body), len(resp.content), t1, t2)
        return ExpertReply(pred=np.array([r["pred"] for r in results], dtype=np.int64),
                           confidence=np.array([r["confidence"] for r in results], dtype=np.float32),
                           queue_ms=float(params.get("queue_ms", 0.0)), compute_ms=float(params.get("compute_ms", 0.0)),
                           batch_size=int(params.get("batch_size", len(images))), round_trip_ms=(t2 - t1) * 1000,
                           encode_ms=(t1 - t0) * 1000, link_ms=link_ms, up_bytes=len(body),
                           down_bytes=len(resp.content), server=self.base_url,
                           ranked=[dict(zip(r["topk"], r["probs"], strict=True)) for r in results])
