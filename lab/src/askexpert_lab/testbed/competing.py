"""Competing load on an expert server: other edges sharing it, each a process in a closed loop.

``with CompetingLoad(url, clients=15, experts=["0", "1", "2"], shape=(1, 28, 28)) as load:`` starts
``clients`` processes (``python -m askexpert_lab.testbed.competing``, pinned to ``cpus`` when given), each
sending one image at a time to an expert drawn at random, and pausing ``think_ms`` between answers
(an edge that offloads a share of its images: the generalist's time between offloads). On exit they
stop and report what they sent (:class:`LoadStats`). Real HTTP through the edge's own client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoadStats:
    clients: int
    requests: int
    failures: int
    seconds: float

    @property
    def rate(self) -> float:
        """Requests a second, all clients together."""
        return self.requests / self.seconds if self.seconds else 0.0


class CompetingLoad:
    def __init__(self, url: str, *, clients: int, experts: list[str], shape: tuple[int, ...], think_ms: float = 30.0,
                 token: str | None = None, ca_file: Path | None = None, cpus: list[int] | None = None,
                 seed: int = 0) -> None:
        self.url, self.clients, self.experts, self.shape = url, clients, experts, tuple(shape)
        self.think_ms, self.token, self.ca_file, self.cpus, self.seed = think_ms, token, ca_file, cpus, seed
        self.procs: list[subprocess.Popen] = []
        self.stats: LoadStats | None = None
        self._t0 = 0.0

    def __enter__(self) -> CompetingLoad:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if self.token:
            env["ASKEXPERT_LOAD_TOKEN"] = self.token  # not on the command line, where ps would show it
        self._t0 = time.monotonic()
        for i in range(self.clients):
            args = [sys.executable, "-m", "askexpert_lab.testbed.competing", self.url, ",".join(self.experts),
                    ",".join(map(str, self.shape)), str(self.think_ms), str(self.seed + i),
                    str(self.ca_file or "")]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
            if self.cpus and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(proc.pid, set(self.cpus))
            self.procs.append(proc)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> LoadStats:
        if self.stats is not None:
            return self.stats
        requests = failures = 0
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            try:
                sent = json.loads(out.strip().splitlines()[-1])
                requests, failures = requests + sent["requests"], failures + sent["failures"]
            except (ValueError, IndexError, KeyError):
                failures += 1  # a client that died without a report
        self.stats = LoadStats(self.clients, requests, failures, time.monotonic() - self._t0)
        return self.stats


def _client(url: str, experts: list[str], shape: tuple[int, ...], think_ms: float, seed: int,
            ca_file: str) -> None:
    import numpy as np

    from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
    from askexpert.runtime.settings import Connection, Security

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (64, 1, *shape), dtype=np.uint8)
    requests = failures = 0
    security = Security(token=os.environ.get("ASKEXPERT_LOAD_TOKEN"), ca_file=Path(ca_file) if ca_file else None)
    with HttpExpertClient(url, Connection(timeout_s=10, retries=0), security, down_for_s=0.2) as client:
        while not stop:
            try:
                client.infer(str(rng.choice(experts)), images[int(rng.integers(len(images)))])
                requests += 1
            except ExpertUnavailable:
                failures += 1
            if think_ms > 0 and not stop:
                time.sleep(float(rng.exponential(think_ms)) / 1000)
    print(json.dumps({"requests": requests, "failures": failures}), flush=True)


if __name__ == "__main__":  # python -m askexpert_lab.testbed.competing URL EXPERTS C,H,W THINK_MS SEED CA_FILE
    _client(sys.argv[1], sys.argv[2].split(","), tuple(int(v) for v in sys.argv[3].split(",")), float(sys.argv[4]),
            int(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else "")
