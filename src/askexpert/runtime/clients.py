"""How the edge reaches the experts: over HTTP (httpx, keep-alive, timeouts, bounded retries), or
in-process (for tests and the everything-local comparison). Both answer with an :class:`ExpertReply`.

When the server cannot be reached (refused, timed out, answering errors), the HTTP client raises
:class:`ExpertUnavailable` and stays "down" for ``down_for_s`` before it tries again, so a dead
server costs one timeout, not one per sample; the edge keeps its own answers meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
import numpy as np

from askexpert.runtime.link import LinkProfile
from askexpert.runtime.protocol import ExpertInfo, HealthResponse, InferResponse, encode_images


class ExpertUnavailable(RuntimeError):
    """No answer from the expert (server down, slow, or failing); the message says why."""


@dataclass
class ExpertReply:
    pred: np.ndarray  # [n] global class ids, -1 for "other"
    confidence: np.ndarray  # [n]
    queue_ms: float
    compute_ms: float
    batch_size: int
    round_trip_ms: float  # request sent -> response read, on the real socket
    encode_ms: float
    link_ms: float  # emulated link delay added (0 without emulation)
    up_bytes: int
    down_bytes: int


def _reply(resp: InferResponse, **kw) -> ExpertReply:
    return ExpertReply(pred=np.array([r.pred for r in resp.results], dtype=np.int64),
                       confidence=np.array([r.confidence for r in resp.results], dtype=np.float32),
                       queue_ms=resp.timings.queue_ms, compute_ms=resp.timings.compute_ms,
                       batch_size=resp.timings.batch_size, **kw)


class HttpExpertClient:
    def __init__(self, base_url: str, *, timeout_s: float = 2.0, retries: int = 1, backoff_s: float = 0.05,
                 down_for_s: float = 1.0, link: LinkProfile | None = None, topk: int = 3,
                 link_sleep: bool = True) -> None:
        """``link`` adds an emulated link's delay to every offload: slept (``link_sleep``, the default:
        the edge really waits, as on that link) or only accounted in ``link_ms`` (a benchmark's
        sequential stream, where waiting would change nothing but the wall time)."""
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.down_for_s = retries, backoff_s, down_for_s
        self.link, self.topk, self.link_sleep = link, topk, link_sleep
        self._down_until = 0.0
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s),
                                 limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=60))
        self._urls: dict[str, httpx.URL] = {}  # parsed once per expert: URL parsing is a real cost per request

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpExpertClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _request(self, method: str, path: str | httpx.URL, **kw) -> httpx.Response:
        if self.is_down:
            raise ExpertUnavailable(f"{self.base_url} is marked down for another "
                                    f"{self._down_until - time.monotonic():.2f} s after a failure")
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * attempt)
            try:
                resp = self.http.request(method, path, **kw)
            except httpx.TransportError as err:  # refused, reset, timed out
                last = f"{type(err).__name__}: {err}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:  # our request is wrong: retrying will not help
                raise ExpertUnavailable(f"{method} {path} rejected with HTTP {resp.status_code}: {resp.text[:300]}")
            self._down_until = 0.0
            return resp
        self._down_until = time.monotonic() + self.down_for_s
        raise ExpertUnavailable(f"{self.base_url}{path} unreachable after {self.retries + 1} attempts ({last})")

    def experts(self) -> list[ExpertInfo]:
        return [ExpertInfo.model_validate(x) for x in self._request("GET", "/v1/experts").json()]

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate(self._request("GET", "/v1/health").json())

    def infer(self, expert_id: str, images: np.ndarray) -> ExpertReply:
        t0 = time.perf_counter()
        body, headers = encode_images(images)
        t1 = time.perf_counter()
        url = self._urls.get(expert_id)
        if url is None:
            url = self._urls[expert_id] = httpx.URL(f"{self.base_url}/v1/experts/{expert_id}/infer?topk={self.topk}")
        resp = self._request("POST", url, content=body, headers=headers)
        t2 = time.perf_counter()
        try:
            parsed = InferResponse.model_validate_json(resp.content)
        except ValueError as err:
            raise ExpertUnavailable(f"expert {expert_id} sent an unreadable answer ({err})") from err
        link_ms = 0.0
        if self.link is not None:
            link_ms = self.link.delay_s(len(body), len(resp.content)) * 1000
            if self.link_sleep:
                time.sleep(link_ms / 1000)
        return _reply(parsed, round_trip_ms=(t2 - t1) * 1000, encode_ms=(t1 - t0) * 1000, link_ms=link_ms,
                      up_bytes=len(body), down_bytes=len(resp.content))


class InProcessExpertClient:
    """The experts of an :class:`~askexpert.serving.pool.ExpertPool` called directly, without a network."""

    def __init__(self, pool, topk: int = 3) -> None:
        self.pool, self.topk = pool, topk

    def experts(self) -> list[ExpertInfo]:
        return [self.pool.get(k).info() for k in self.pool.ids()]

    def infer(self, expert_id: str, images: np.ndarray) -> ExpertReply:
        t0 = time.perf_counter()
        out = self.pool.infer(expert_id, images)
        ms = (time.perf_counter() - t0) * 1000
        results = out.results(self.topk)
        return ExpertReply(pred=np.array([r.pred for r in results], dtype=np.int64),
                           confidence=np.array([r.confidence for r in results], dtype=np.float32),
                           queue_ms=0.0, compute_ms=ms, batch_size=len(images), round_trip_ms=ms, encode_ms=0.0,
                           link_ms=0.0, up_bytes=0, down_bytes=0)
