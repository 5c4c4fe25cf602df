"""The open-loop load (MLPerf's server scenario) against a real server on loopback whose queue bound is tiny:
arrivals past what it holds are shed at once with 503 (never a pile-up of timeouts), every answer it gives
equals a single send's, the counts add up, and the load stops by itself; the edge takes a shed as degraded."""

from __future__ import annotations

import numpy as np
import pytest

from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
from askexpert.runtime.settings import Connection
from askexpert_lab.testbed.open_loop import Sender, open_loop, reference_answers
from askexpert_lab.testbed.server import ServerProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tight_server(tiny_system):
    with ServerProcess(tiny_system["bundle"], threads=1, extra_args=["--max-in-flight", "2", "--no-general"]) as url:
        yield url


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_past_its_bound_the_server_sheds_at_once_and_answers_stay_right(tight_server, protocol):
    images = np.random.default_rng(7).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    sender = Sender(tight_server, "0", protocol, timeout_s=5.0, connections=64)
    try:
        reference = reference_answers(sender, images)
        result = open_loop(sender, images, reference, rate=2000, seconds=0.5, seed=1, workers=64)
    finally:
        sender.close()
    assert result.sent == result.answered + result.shed + result.failed and result.sent > 500
    assert result.shed > 0 and result.failed == 0 and result.mismatched == 0
    assert result.answered > 0 and result.p99_ms is not None


def test_the_edge_takes_a_shed_request_as_unavailable(tight_server):
    """503 with Retry-After: retried within the deadline, then the expert is unavailable (the edge keeps its own
    answer, flagged degraded), never a hang."""
    import threading

    images = np.zeros((1, 1, 28, 28), np.uint8)
    sender = Sender(tight_server, "0", "v1", timeout_s=5.0, connections=64)
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            open_loop(sender, images, [0], rate=3000, seconds=0.2, workers=64)

    flooding = threading.Thread(target=flood)
    flooding.start()
    outcomes = []
    try:
        with HttpExpertClient(tight_server, Connection(timeout_s=1.0, retries=0), down_for_s=0.0) as client:
            for _ in range(60):
                try:
                    client.infer("0", images)
                    outcomes.append("answered")
                except ExpertUnavailable as err:
                    outcomes.append(f"unavailable {err}")
    finally:
        stop.set()
        flooding.join()
        sender.close()
    assert any("HTTP 503" in o for o in outcomes)  # shed, said so, and the edge went on
