"""How the edge reaches the experts: over HTTP (httpx, keep-alive, timeouts, bounded retries), or
in-process (for tests and the everything-local comparison). Both answer with an :class:`ExpertReply`.

Whatever goes wrong with the server (refused, timed out, an error status, a reply that is not the
protocol's JSON), the HTTP client raises :class:`ExpertUnavailable` and never anything else, so the
edge keeps its own answer for those samples (the edge runner checks what the answers say). A 5xx or
429 is retried (``retries``) after a short backoff, or after the pause the server's ``Retry-After`` asks
for when that fits in the deadline. After a failure it stays "down" for ``down_for_s`` (or the
server's Retry-After, if longer) before it tries again, so a dead server costs one deadline, not one per
sample.

Each offload has one total ``deadline_s``, retries included: every socket operation (connect, TLS,
each write and read) is bounded by the time left to it, so a server that trickles one byte at a
time cannot hold the edge past it (per-phase timeouts alone would let it).
"""

from __future__ import annotations

import datetime
import email.utils
import ssl
import threading
import time
from dataclasses import dataclass

import httpcore
import httpx
import numpy as np
from pydantic import TypeAdapter

from askexpert.contract.codecs import pillow
from askexpert.contract.protocol import ExpertInfo, HealthResponse, InferResponse, TryResult, encode_images
from askexpert.contract.reroute import settle
from askexpert.runtime.pacing import NO_PACING, Pacer
from askexpert.runtime.settings import Connection, Security
from askexpert.security import tls_context


class ExpertUnavailable(RuntimeError):
    """No answer from the expert (server down, slow, or failing); the message says why, ``status`` the
    HTTP status when the server answered with one."""

    def __init__(self, message: str, status: int | None = None, server: str | None = None) -> None:
        super().__init__(message)
        self.status, self.server = status, server  # the server's URL, when one server is to blame


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
    server: str | None = None  # the URL of the server that answered
    # per image, the expert's most probable outputs and their probabilities ({global class id or -1: p}):
    # what it says of the generalist's answer (None: the client does not read them)
    ranked: list[dict[int, float]] | None = None
    # a re-routed request (contract.reroute): per image, the expert whose answer stands and every try
    answered_by: list[str] | None = None
    tries: list[list[TryResult]] | None = None


def _ranked(results) -> list[dict[int, float]]:
    return [dict(zip(r.topk, r.probs, strict=True)) for r in results]


def _reply(resp: InferResponse, **kw) -> ExpertReply:
    rerouted = resp.results and resp.results[0].tries is not None
    return ExpertReply(pred=np.array([r.pred for r in resp.results], dtype=np.int64),
                       confidence=np.array([r.confidence for r in resp.results], dtype=np.float32),
                       queue_ms=resp.timings.queue_ms, compute_ms=resp.timings.compute_ms,
                       batch_size=resp.timings.batch_size, ranked=_ranked(resp.results),
                       answered_by=[r.expert or resp.expert for r in resp.results] if rerouted else None,
                       tries=[r.tries or [] for r in resp.results] if rerouted else None, **kw)


def _next_query(ranking: list[str] | None) -> str:
    """The ``next`` query parameter of a re-routed request ("" when the request is not re-routed)."""
    return "" if ranking is None else "&next=" + ",".join(ranking)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self.inner, self.backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.backend.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.backend.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname,
                                                    self.backend.left(timeout, httpcore.ConnectTimeout)), self.backend)

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with every operation bounded by the calling thread's deadline."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.local = threading.local()

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        deadline = getattr(self.local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise error("the offload's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self.inner.connect_tcp(host, port, self.left(timeout, httpcore.ConnectTimeout),
                                                      local_address, socket_options), self)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self.inner.connect_unix_socket(path, self.left(timeout, httpcore.ConnectTimeout),
                                                              socket_options), self)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def retry_after_s(resp: httpx.Response) -> float | None:
    """A 503's or 429's ``Retry-After`` in seconds (delay-seconds or an HTTP date; RFC 9110 10.2.3), None when
    absent or unreadable."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - datetime.datetime.now(datetime.timezone.utc)).total_seconds(), 0.0)


class HttpExpertClient:
    def __init__(self, base_url: str, connection: Connection = Connection(), security: Security = Security(), *,
                 system_id: str | None = None, topk: int = 3, link_sleep: bool = True, backoff_s: float = 0.05,
                 down_for_s: float = 1.0, pacer: Pacer = NO_PACING) -> None:
        """``connection`` (the edge's settings group; its server and protocol are the caller's): ``timeout_s``
        bounds each network wait of an attempt; ``deadline_s`` (default ``(retries + 1) * timeout_s``) bounds a
        whole offload, its retries included; ``link`` adds an emulated link's delay to every offload: slept
        (``link_sleep``, the default: the edge really waits, as on that link) or only accounted in ``link_ms``
        (a benchmark's sequential stream, where waiting would change nothing but the wall time); ``encoding``:
        how the images travel (raw bytes, .npy, PNG, JPEG or WebP at a quality); its bytes set the link's time.
        ``security``: the server's bearer ``token``, and ``ca_file``, the authority that signed an https
        server's certificate. ``system_id``: the bundle's; images go only to a server whose health names it
        (module docstring). ``pacer``: an emulated edge's pace for the encoding and the exchange
        (:mod:`askexpert.runtime.pacing`)."""
        c = connection
        self.encoding, self.pacer = c.encoding, pacer
        if c.encoding.content_type is not None:
            pillow()  # the codec's import now, not inside the first offload's timing
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.down_for_s = c.retries, backoff_s, down_for_s
        self.deadline_s = c.deadline_s if c.deadline_s is not None else (c.retries + 1) * c.timeout_s
        self.link, self.topk, self.link_sleep = c.link, topk, link_sleep
        self._down_until, self._down_why = 0.0, ""
        self.system_id = system_id
        self._trusted = system_id is None  # a bundle's client trusts a server once its health names the system
        self._backend = _DeadlineBackend()
        limits = httpx.Limits(max_keepalive_connections=4, keepalive_expiry=60)
        context = tls_context(security.ca_file)
        transport = httpx.HTTPTransport(verify=context, limits=limits)
        # the same pool httpx builds, on the deadline-bounded backend (httpx does not take a backend itself)
        transport._pool = httpcore.ConnectionPool(ssl_context=context, max_connections=limits.max_connections,
                                                  max_keepalive_connections=limits.max_keepalive_connections,
                                                  keepalive_expiry=limits.keepalive_expiry,
                                                  network_backend=self._backend)
        headers = {"Authorization": f"Bearer {security.token}"} if security.token else None
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(c.timeout_s), transport=transport,
                                 headers=headers)
        self._urls: dict = {}  # parsed once per expert (and ranking): URL parsing is a real cost per request

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
        """The server's 200 answer, within the deadline; else :class:`ExpertUnavailable` saying why."""
        if self.is_down:
            raise ExpertUnavailable(f"{self.base_url} is marked down for another "
                                    f"{self._down_until - time.monotonic():.2f} s after a failure: {self._down_why}",
                                    server=self.base_url)
        start = time.monotonic()
        deadline = start + self.deadline_s
        last, asked_pause = "no attempt", None
        self._backend.local.deadline = deadline
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    pause = self.backoff_s * attempt if asked_pause is None else asked_pause
                    if time.monotonic() + pause >= deadline:
                        break
                    time.sleep(pause)
                try:
                    resp = self.http.request(method, path, **kw)
                except httpx.HTTPError as err:  # refused, reset, timed out, a malformed HTTP answer
                    last = f"{type(err).__name__}: {err}"
                    if time.monotonic() >= deadline:
                        last = f"deadline of {self.deadline_s:g} s passed ({last})"
                        break
                    continue
                if resp.status_code >= 500 or resp.status_code == 429:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    asked_pause = retry_after_s(resp)  # the server's own word on when to come back
                    continue
                if resp.status_code in (401, 403):
                    raise ExpertUnavailable(f"{method} {path} refused with HTTP {resp.status_code}: {resp.text[:200]} "
                                            "(pass the server's token: --token-file FILE or ASKEXPERT_TOKEN)",
                                            resp.status_code, self.base_url)
                if resp.status_code != 200:  # our request is wrong, or not our server: retrying will not help
                    raise ExpertUnavailable(f"{method} {path} answered HTTP {resp.status_code}: {resp.text[:300]}",
                                            resp.status_code, self.base_url)
                self._down_until = 0.0
                return resp
        finally:
            self._backend.local.deadline = None
        why = (f"{self.base_url}{path} unreachable after {attempt + 1} attempts in "
               f"{time.monotonic() - start:.2f} s ({last})")
        if asked_pause is not None:
            why += f"; it asked for {asked_pause:g} s before another request (Retry-After)"
        self._mark_down(why, asked_pause or 0.0)
        raise ExpertUnavailable(why, server=self.base_url)

    def _mark_down(self, why: str, at_least_s: float = 0.0) -> None:
        """No request for ``down_for_s`` (or the server's Retry-After, if longer); whoever answers after that
        must show its system again."""
        self._down_until, self._down_why = time.monotonic() + max(self.down_for_s, at_least_s), why
        self._trusted = self.system_id is None

    def _distrust(self, health: HealthResponse) -> str | None:
        """Why a server with this health document is not this system's server, or None when it is."""
        if self.system_id is None or health.system_id == self.system_id:
            return None
        named = "no system id (a run directory's server)" if health.system_id is None else \
            f"system {health.system_id[:12]}"
        return f"its /v1/health names {named}, this bundle is system {self.system_id[:12]}"

    def _ensure_trusted(self) -> None:
        """For a bundle's client: the server's health must name this system before any image is sent."""
        if self._trusted or self.is_down:
            return  # a server marked down is refused by _request, saying why
        try:
            resp = self._request("GET", "/v1/health")
        except ExpertUnavailable as err:
            if err.status is None or err.status in (401, 403):
                raise  # unreachable (marked down already), or our token is refused: said as such
            why = f"its /v1/health answered HTTP {err.status}"
        else:
            try:
                why = self._distrust(HealthResponse.model_validate_json(resp.content))
            except ValueError:  # an HTML page, or JSON that is not the health document
                why = (f"its /v1/health is not the protocol's health document "
                       f"({resp.headers.get('content-type', 'no content type')}: {resp.text[:60]!r})")
        if why is not None:
            self._mark_down(f"{self.base_url} is not this system's expert server ({why}): no image goes there and "
                            "none of its answers are used -- fix: serve this bundle there (askexpert serve BUNDLE)")
            raise ExpertUnavailable(self._down_why, server=self.base_url)
        self._trusted = True

    def _parse(self, what: str, resp: httpx.Response, parse):
        try:
            return parse(resp.content)
        except ValueError as err:  # not JSON, or not the protocol's (pydantic's errors are ValueErrors)
            raise ExpertUnavailable(f"{what} from {self.base_url} is not the protocol's JSON "
                                    f"({type(err).__name__}: {str(err)[:200]}); is a proxy answering?",
                                    server=self.base_url) from err

    def experts(self) -> list[ExpertInfo]:
        resp = self._request("GET", "/v1/experts")
        return self._parse("the expert list", resp, lambda raw: _EXPERT_LIST.validate_json(raw))

    def health(self) -> HealthResponse:
        return self._parse("the health answer", self._request("GET", "/v1/health"), HealthResponse.model_validate_json)

    def infer(self, expert_id: str, images: np.ndarray, ranking: list[str] | None = None) -> ExpertReply:
        """Expert ``expert_id``'s answers; ``ranking``: the generalist's ranking of the other experts, for a
        server that re-routes (its answers then name who answered and every try)."""
        self._ensure_trusted()
        t0 = time.perf_counter()
        body, headers = self.pacer.dilated(lambda: encode_images(images, self.encoding))
        t1 = time.perf_counter()
        key = expert_id if ranking is None else (expert_id, *ranking)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = httpx.URL(f"{self.base_url}/v1/experts/{expert_id}/infer?topk={self.topk}"
                                              + _next_query(ranking))
        resp = self.pacer.dilated(lambda: self._request("POST", url, content=body, headers=headers))
        t2 = time.perf_counter()
        parsed = self._parse(f"expert {expert_id}'s answer", resp, InferResponse.model_validate_json)
        return _reply(parsed, round_trip_ms=(t2 - t1) * 1000, encode_ms=(t1 - t0) * 1000,
                      link_ms=self._link_ms(len(body), len(resp.content), t1, t2), up_bytes=len(body),
                      down_bytes=len(resp.content), server=self.base_url)

    def _link_ms(self, up: int, down: int, sent: float, answered: float) -> float:
        """The emulated link's delay of one offload (0 without one), slept here unless only accounted."""
        if self.link is None:
            return 0.0
        link_ms = self.link.delay_s(up, down, sent_s=sent, server_s=answered - sent, slept=self.link_sleep) * 1000
        if self.link_sleep:
            time.sleep(link_ms / 1000)
        return link_ms


_EXPERT_LIST = TypeAdapter(list[ExpertInfo])


class ServerSet:
    """Several expert servers seen as one client: each expert is asked on a server that lists it (learned
    from every server's ``GET /v1/experts``; an expert several servers hold is tried on the next when one
    fails). An expert whose servers are all down fails alone, like a single dead server: the others keep
    answering. Servers unreachable when the experts were listed are asked again at most every
    ``relearn_s`` seconds, when an expert no server lists is asked for or every server holding one has
    failed, so experts appear when their server comes up."""

    def __init__(self, clients: list[HttpExpertClient], *, relearn_s: float = 1.0) -> None:
        self.clients, self.relearn_s = clients, relearn_s
        self.where: dict[str, list[HttpExpertClient]] = {}
        self.infos: dict[str, ExpertInfo] = {}
        self._listed: set[int] = set()  # servers whose list is known
        self._next_learn = 0.0

    def _learn(self, force: bool = False) -> list[str]:
        """Ask the servers not listed yet for their experts; returns why each one could not answer."""
        if not force and time.monotonic() < self._next_learn:
            return []
        self._next_learn = time.monotonic() + self.relearn_s
        failures = []
        for i, client in enumerate(self.clients):
            if i in self._listed:
                continue
            try:
                infos = client.experts()
            except ExpertUnavailable as err:
                failures.append(str(err))
                continue
            self._listed.add(i)
            for info in infos:
                self.where.setdefault(info.id, []).append(client)
                self.infos.setdefault(info.id, info)
        return failures

    def experts(self) -> list[ExpertInfo]:
        failures = self._learn(force=True)
        if not self.infos:
            raise ExpertUnavailable("no expert server answered the expert list: " + "; ".join(failures))
        return list(self.infos.values())

    def infer(self, expert_id: str, images: np.ndarray, ranking: list[str] | None = None) -> ExpertReply:
        if expert_id not in self.where:
            self._learn()
        if not self.where.get(expert_id):
            raise ExpertUnavailable(f"no reachable server lists expert {expert_id} (servers: "
                                    f"{', '.join(c.base_url for c in self.clients)})")
        failures: list[str] = []
        asked: list[HttpExpertClient] = []
        while fresh := [c for c in self.where[expert_id] if c not in asked]:
            for client in sorted(fresh, key=lambda c: c.is_down):  # servers not marked down first
                asked.append(client)
                try:
                    return client.infer(expert_id, images, ranking)
                except ExpertUnavailable as err:
                    if err.status is not None and 400 <= err.status < 500:
                        raise  # our request is wrong: another server would say the same
                    failures.append(str(err))
            self._learn()  # every holder failed: a server down when the experts were listed may hold it now
        raise ExpertUnavailable(f"expert {expert_id}: " + "; ".join(failures),
                                server=asked[0].base_url if len(asked) == 1 else None)

    def close(self) -> None:
        for client in self.clients:
            client.close()


class InProcessExpertClient:
    """The experts of an :class:`~askexpert.serving.pool.ExpertPool` called directly, without a network."""

    def __init__(self, pool, topk: int = 3) -> None:
        self.pool, self.topk = pool, topk

    def experts(self) -> list[ExpertInfo]:
        return [self.pool.get(k).info() for k in self.pool.ids()]

    def infer(self, expert_id: str, images: np.ndarray, ranking: list[str] | None = None) -> ExpertReply:
        """The pool's answers; with ``ranking`` and a pool whose bundle re-routes, re-asked as the server does
        (:mod:`askexpert.contract.reroute`), one image at a time."""
        rule = getattr(self.pool, "reroute", None)
        if ranking is not None and rule is not None and rule.active:
            return self._rerouted(expert_id, images, rule.chain(expert_id, ranking), rule)
        t0 = time.perf_counter()
        out = self.pool.infer(expert_id, images)
        ms = (time.perf_counter() - t0) * 1000
        results = out.results(self.topk)
        return ExpertReply(pred=np.array([r.pred for r in results], dtype=np.int64),
                           confidence=np.array([r.confidence for r in results], dtype=np.float32),
                           queue_ms=0.0, compute_ms=ms, batch_size=len(images), round_trip_ms=ms, encode_ms=0.0,
                           link_ms=0.0, up_bytes=0, down_bytes=0, ranked=_ranked(results))

    def _rerouted(self, expert_id: str, images: np.ndarray, chain: list[str], rule) -> ExpertReply:
        chain = [e for e in chain if e in self.pool.ids()]
        t0 = time.perf_counter()
        results, answered_by, tries = [], [], []
        for image in images:
            said, asked = [], []
            for e in chain:
                t = time.perf_counter()
                r = self.pool.infer(e, image[None]).results(self.topk)[0]
                said.append(r)
                asked.append(TryResult(expert=e, pred=r.pred, confidence=r.confidence, queue_ms=0.0,
                                       compute_ms=(time.perf_counter() - t) * 1000, batch_size=1))
                if not rule.retry(r.pred, r.confidence):
                    break
            stands = settle(rule, [(r.pred, r.confidence) for r in said])
            results.append(said[stands])
            answered_by.append(chain[stands])
            tries.append(asked)
        ms = (time.perf_counter() - t0) * 1000
        return ExpertReply(pred=np.array([r.pred for r in results], dtype=np.int64),
                           confidence=np.array([r.confidence for r in results], dtype=np.float32),
                           queue_ms=0.0, compute_ms=ms, batch_size=len(images), round_trip_ms=ms, encode_ms=0.0,
                           link_ms=0.0, up_bytes=0, down_bytes=0, ranked=_ranked(results), answered_by=answered_by,
                           tries=tries)
