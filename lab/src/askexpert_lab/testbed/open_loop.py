"""An open-loop load (MLPerf's "server" scenario): requests arrive as a Poisson process at a target rate whatever
the server's answers do, each one image to an expert, over askexpert's ``/v1`` or the Open Inference Protocol;
every answer checked against the one a single send got, every refusal counted by its status.

Latency is measured from each request's scheduled arrival (a client's wait for a free connection counts, as a
user's would), and each request has a deadline: past capacity a server must shed (429 or 503, at once) rather
than let requests pile up into timeouts. The load stops by itself after its arrivals; requests go to the URL
given (loopback in the benchmarks and tests).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

from askexpert.contract import oip
from askexpert.contract.protocol import encode_images

SHED = (429, 503)


@dataclass
class OpenLoopResult:
    """What one open-loop run saw."""

    protocol: str
    offered_rps: float
    seconds: float
    sent: int
    answered: int
    shed: int  # 429 / 503: refused at once, the server protecting itself
    failed: int  # timeouts, connection errors, other statuses
    mismatched: int  # answered, but not what a single send of that image got
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @property
    def p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None

    @property
    def achieved_rps(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        return {**out, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "achieved_rps": self.achieved_rps,
                "shed_share": self.shed / self.sent if self.sent else 0.0}


class Sender:
    """One image to one expert, as a request of ``protocol`` (``v1`` or ``v2``); its answer as a class id (or the
    top output's index under v2, whose logits the edge maps to classes itself)."""

    def __init__(self, base_url: str, expert: str, protocol: str, *, timeout_s: float, connections: int) -> None:
        self.protocol = protocol
        path = f"/v1/experts/{expert}/infer?topk=1" if protocol == "v1" else \
            f"/v2/models/{oip.model_name(expert)}/versions/{oip.VERSION}/infer"
        self.url = base_url.rstrip("/") + path
        self.http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=connections,
                                                                        max_keepalive_connections=connections))

    def body(self, image: np.ndarray) -> tuple[bytes, dict[str, str]]:
        return encode_images(image[None]) if self.protocol == "v1" else oip.infer_request(image[None])

    def answer(self, resp: httpx.Response) -> int:
        if self.protocol == "v1":
            return int(resp.json()["results"][0]["pred"])
        outputs, _ = oip.read_response(resp.content, resp.headers.get(oip.HEADER_LENGTH))
        return int(outputs[oip.OUTPUT][0].argmax())

    def send(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.http.post(self.url, content=body, headers=headers)

    def close(self) -> None:
        self.http.close()


def reference_answers(sender: Sender, images: np.ndarray) -> list[int]:
    """Each image's answer from a single send, one at a time (what the load's answers must equal)."""
    out = []
    for image in images:
        resp = sender.send(*sender.body(image))
        resp.raise_for_status()
        out.append(sender.answer(resp))
    return out


def open_loop(sender: Sender, images: np.ndarray, reference: list[int], *, rate: float, seconds: float,
              seed: int = 0, workers: int = 64, on_progress: Callable[[int], None] | None = None) -> OpenLoopResult:
    """Poisson arrivals at ``rate`` a second for ``seconds``, each image drawn from ``images`` (module docstring)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 16))
    arrivals = arrivals[arrivals < seconds]
    picks = rng.integers(0, len(images), size=len(arrivals))
    bodies = [sender.body(image) for image in images]
    lock = threading.Lock()
    result = OpenLoopResult(sender.protocol, rate, seconds, len(arrivals), 0, 0, 0, 0)

    def one(i: int, due: float) -> None:
        try:
            resp = sender.send(*bodies[picks[i]])
        except httpx.HTTPError:
            with lock:
                result.failed += 1
            return
        done = time.perf_counter()
        with lock:
            if resp.status_code == 200:
                result.answered += 1
                result.latencies_ms.append((done - due) * 1000)
                if sender.answer(resp) != reference[picks[i]]:
                    result.mismatched += 1
            elif resp.status_code in SHED:
                result.shed += 1
            else:
                result.failed += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, at in enumerate(arrivals):
            due = start + at
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, i, due)
            if on_progress is not None:
                on_progress(i + 1)
    result.seconds = max(seconds, time.perf_counter() - start)
    return result
