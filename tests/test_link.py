"""Link emulation: parsing, the delay model, and (as root) agreement with a link shaped by Linux tbf."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from askexpert.errors import ConfigError
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.link import PRESETS, LinkProfile, parse_link, parse_link_arg
from askexpert.runtime.settings import Connection

pytestmark = pytest.mark.timeout(300)  # real servers and network namespaces


def test_presets_and_spelled_out_links():
    assert parse_link("wifi") == PRESETS["wifi"] and parse_link(None) is None and parse_link("none") is None
    link = parse_link("rtt=20ms,bw=20mbit")
    assert (link.rtt_ms, link.bandwidth_mbit) == (20.0, 20.0)
    assert parse_link("rtt=1s,bw=500kbit").bandwidth_mbit == 0.5
    # 20 ms plus 250,000 bytes at 20 Mbit/s = 100 ms
    assert link.delay_s(200_000, 50_000) == pytest.approx(0.12)


@pytest.mark.parametrize("text", ["rtt=20,bw=20mbit", "fast", "rtt=20ms", "rtt=20ms,bw=20mbit,loss=1"])
def test_bad_links_are_clear_errors(text):
    with pytest.raises(ConfigError, match="cannot read link .*fix: use a preset"):
        parse_link(text)


def test_emulated_link_delays_real_requests(experts_server):
    images = np.zeros((64, 1, 28, 28), dtype=np.uint8)
    link = LinkProfile("slow", rtt_ms=30, bandwidth_mbit=10)
    with HttpExpertClient(experts_server) as plain, HttpExpertClient(experts_server, Connection(link=link)) as shaped:
        plain.infer("0", images)
        t0 = time.perf_counter()
        reply = shaped.infer("0", images)
        elapsed = time.perf_counter() - t0
    expected = link.delay_s(reply.up_bytes, reply.down_bytes)
    assert reply.link_ms == pytest.approx(expected * 1000)
    assert elapsed >= expected and reply.up_bytes == 64 * 784


def test_a_benchmark_stream_accounts_the_link_without_sleeping(experts_server):
    """With link_sleep off the delay is reported (and counted in the trace) but not waited out."""
    images = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    link = LinkProfile("far", rtt_ms=3000, bandwidth_mbit=10)  # a 3 s round trip: sleeping would show
    with HttpExpertClient(experts_server, Connection(link=link, timeout_s=10), link_sleep=False) as client:
        client.infer("0", images)
        t0 = time.perf_counter()
        reply = client.infer("0", images)
        elapsed = time.perf_counter() - t0
    assert reply.link_ms == pytest.approx(link.delay_s(reply.up_bytes, reply.down_bytes) * 1000)
    assert reply.link_ms > 3000 and elapsed < 3.0


def _can_shape() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and tbf qdiscs"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2's {tool} (apt-get install iproute2)"
    return None


class ShapedVeth:
    """A veth pair from this namespace into a fresh network namespace, optionally rate-limited by tbf
    on both ends (requests and answers)."""

    def __init__(self, rate_mbit: float) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns, self.host_if, self.ns_if = f"askexpert-{tag}", f"aeh{tag}", f"aen{tag}"
        self.rate = rate_mbit
        octet = os.getpid() % 200 + 20
        self.host_ip, self.ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def __enter__(self) -> ShapedVeth:
        self._run("ip", "netns", "add", self.ns)
        self._run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._run("ip", "link", "set", self.ns_if, "netns", self.ns)
        self._run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        self._run("ip", "-n", self.ns, "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        self._run("ip", "link", "set", self.host_if, "up")
        self._run("ip", "-n", self.ns, "link", "set", self.ns_if, "up")
        self._run("ip", "-n", self.ns, "link", "set", "lo", "up")
        return self

    def shape(self, on: bool) -> None:
        for prefix, dev in ((["ip", "netns", "exec", self.ns], self.ns_if), ([], self.host_if)):
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if on:
                self._run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{self.rate}mbit",
                          "burst", "32kbit", "latency", "1000ms")

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.mark.slow
def test_emulated_link_matches_a_tbf_shaped_link(tiny_system):
    """The same payloads over a real 20 Mbit/s tbf-shaped veth and through the emulation agree within 15%.
    (This kernel has tbf but not netem, so only the bandwidth part is shaped for real.)"""
    reason = _can_shape()
    if reason:
        pytest.skip(f"tbf link test skipped: {reason}")
    try:
        veth = ShapedVeth(rate_mbit=20).__enter__()
    except subprocess.CalledProcessError as err:
        pytest.skip(f"tbf link test skipped: cannot create a network namespace here ({err.stderr.strip()})")
    server = None
    try:
        port = 8731
        server = subprocess.Popen(
            ["ip", "netns", "exec", veth.ns, sys.executable, "-m", "askexpert.cli", "serve",
             str(tiny_system["experts"]), "--host", veth.ns_ip, "--port", str(port), "--threads", "1", "--no-general",
             "--insecure"],  # a private network namespace: no token needed
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        url = f"http://{veth.ns_ip}:{port}"
        emulated = LinkProfile("tbf-20", rtt_ms=0, bandwidth_mbit=20)
        with HttpExpertClient(url, Connection(timeout_s=30, retries=40), backoff_s=0.25) as client:
            client.experts()  # waits (with retries) until the server is up
            rows = []
            for n in (256, 1024):  # 2,048 added ~30 s of compute and no new evidence
                images = np.random.default_rng(n).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
                times = {}
                for shaped in (False, True):
                    veth.shape(shaped)
                    client.infer("1", images)  # warm the connection under this setting
                    samples = []
                    for _ in range(5):  # the median of 5: one request slowed by a busy machine does not decide
                        r = client.infer("1", images)
                        samples.append(r.round_trip_ms - r.queue_ms - r.compute_ms)
                    times[shaped] = float(np.median(samples))
                real_ms = times[True] - times[False]
                emul_ms = emulated.delay_s(r.up_bytes, r.down_bytes) * 1000
                rows.append((n, r.up_bytes + r.down_bytes, real_ms, emul_ms))
        for n, moved, real_ms, emul_ms in rows:
            print(f"tbf 20 Mbit/s: {n} images, {moved} bytes: shaped {real_ms:.1f} ms, emulated {emul_ms:.1f} ms")
            assert abs(real_ms - emul_ms) <= 0.15 * emul_ms, (n, moved, real_ms, emul_ms, rows)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
        veth.__exit__(None, None, None)


# ---- recorded links (Mahimahi traces) --------------------------------------------------------------------------

def _trace_files(tmp_path, up: str, down: str):
    (tmp_path / "t.up").write_text(up)
    (tmp_path / "t.down").write_text(down)
    return tmp_path / "t"


def test_a_trace_link_delays_by_the_time_worked_out_by_hand(tmp_path):
    """Uplink opportunities at 2, 2, 5, 10 ms (repeating every 10 ms), downlink at 1, 4, 8 (every 8), 6 ms RTT.
    Offload 1 at 0 ms: 3,000 bytes (2 packets) leave at 2 and 2, reach the server at 5, the answer (1 packet)
    leaves at 6 -> the 8 ms opportunity, arrives at 11: 11 - 0 - 1 ms of server = 10 ms.
    Offload 2 at 1 ms: 4,500 bytes (3 packets) queue behind offload 1's, so they take 5, 10 and 12 (the
    repetition's 2); server at 15; 1,600 bytes (2 packets) from 15 take 16 and 17 (the next repetitions);
    arrive at 20: 20 - 1 = 19 ms. On empty queues offload 2 would take 11 ms."""
    stem = _trace_files(tmp_path, "2\n2\n5\n10\n", "1\n4\n8\n")
    link = parse_link(f"trace:{stem},rtt=6ms")
    assert link.name == "trace:t" and link.rtt_ms == 6.0
    assert link.delay_s(3000, 100, sent_s=100.0, server_s=0.001) * 1000 == pytest.approx(10.0)
    assert link.delay_s(4500, 1600, sent_s=100.001, server_s=0.0) * 1000 == pytest.approx(19.0)
    fresh = parse_link(f"trace:{tmp_path / 't.up'},{tmp_path / 't.down'},rtt=6ms")
    assert fresh.crossing_ms(1.0, 4500, 1600, 0.0) == pytest.approx(11.0)


def test_a_trace_link_not_slept_runs_its_clock_ahead(tmp_path):
    """A benchmark that accounts the delay without waiting: the next offload, sent at the same real moment,
    is sent on the link's clock after the first one's delay. One packet a millisecond (at 1, 2, 3, ...).
    First, at 0: 2 packets up at 1 and 2, 2 down at 2 and 3: 3 ms. Second, at 3 on the link's clock: up at
    3 and 4, down at 4 and 5: 2 ms (sent at 0 as the real clock says, it would have taken 5)."""
    stem = _trace_files(tmp_path, "1\n", "1\n")
    link = parse_link(f"trace:{stem},rtt=0ms")
    first = link.delay_s(3000, 3000, sent_s=5.0, slept=False) * 1000
    second = link.delay_s(3000, 3000, sent_s=5.0, slept=False) * 1000
    assert (first, second) == (pytest.approx(3.0), pytest.approx(2.0))
    assert link.clock_ms(5.0) == pytest.approx(5.0)
    assert link.up.mean_mbit == pytest.approx(12.0)  # Mahimahi's README: a file holding "1" is 12 Mbit/s


@pytest.mark.parametrize("content,match", [
    ("", "is empty"), ("0\n0\n", "ends at 0 ms"), ("3\n5\n4\n", "line 3: 4 comes before"),
    ("1\nfast\n2\n", "line 2: 'fast' is not a whole number"), ("1\n2.5\n", "line 2"), ("1\n\n2\n", "line 2"),
    ("1\n-3\n", "line 2")])
def test_bad_trace_files_are_refused_with_their_line(tmp_path, content, match):
    stem = _trace_files(tmp_path, content, "1\n")
    with pytest.raises(ConfigError, match=match + ".*fix: a Mahimahi trace"):
        parse_link(f"trace:{stem}")


@pytest.mark.parametrize("text,match", [("trace:", "names no trace files"),
                                        ("trace:a,b,c", "names 3 trace files"),
                                        ("trace:/nonexistent/x", "does not exist"),
                                        ("trace:/nonexistent/x,rtt=fast", "cannot read the round trip")])
def test_bad_trace_links_are_clear_errors(text, match):
    with pytest.raises(ConfigError, match=match + ".*fix: use trace:UP,DOWN"):
        parse_link(text)


def test_a_trace_link_in_a_schedule(tmp_path):
    stem = _trace_files(tmp_path, "1\n", "1\n")
    schedule = parse_link_arg(f"trace:{stem},rtt=10ms@0,wifi@50")
    assert schedule.name == "trace:t" and "10 ms RTT" in schedule.describe()
    assert schedule.delay_s(1500, 1500, sent_s=0.0) * 1000 == pytest.approx(11.0)  # up and down at 1 ms, + 10
    schedule.at(60)
    assert schedule.name == "wifi"


def test_the_client_sends_over_a_trace_link_as_computed(experts_server, tmp_path):
    """Over real HTTP: the first offload's link time is the trace's crossing of its real bytes, with the
    server's real time between the two crossings; the edge waits it out."""
    stem = _trace_files(tmp_path, "1\n1\n3\n", "2\n")  # up 2 packets every 3 ms (8 Mbit/s), down 6 Mbit/s
    link = parse_link(f"trace:{stem},rtt=4ms")
    images = np.zeros((16, 1, 28, 28), dtype=np.uint8)
    with HttpExpertClient(experts_server) as plain:
        plain.infer("0", images)  # the model's first call, outside the timing
    with HttpExpertClient(experts_server, Connection(link=link)) as client:
        t0 = time.perf_counter()
        reply = client.infer("0", images)
        elapsed = time.perf_counter() - t0
    fresh = parse_link(f"trace:{stem},rtt=4ms")
    expected = fresh.crossing_ms(0.0, reply.up_bytes, reply.down_bytes, reply.round_trip_ms)
    assert reply.link_ms == pytest.approx(expected) and expected > 4.0
    assert elapsed * 1000 >= expected + reply.round_trip_ms - 1e-6


def test_the_recorded_cellular_traces_read_as_their_readme_says():
    from pathlib import Path

    root = Path(__file__).parents[2] / "shared" / "traces"
    if not (root / "Verizon-LTE-short.up").is_file():
        pytest.skip(f"the recorded traces are not at {root}")
    link = parse_link(f"trace:{root / 'Verizon-LTE-short'}")
    assert (round(link.up.mean_mbit, 2), round(link.down.mean_mbit, 2)) == (5.95, 5.03)
    assert link.sample_ms(1000, 500).min() >= link.rtt_ms
