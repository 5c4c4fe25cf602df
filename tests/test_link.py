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
from askexpert.runtime.link import PRESETS, LinkProfile, parse_link

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
    with HttpExpertClient(experts_server) as plain, HttpExpertClient(experts_server, link=link) as shaped:
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
    with HttpExpertClient(experts_server, link=link, link_sleep=False, timeout_s=10) as client:
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
        with HttpExpertClient(url, timeout_s=30, retries=40, backoff_s=0.25) as client:
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
