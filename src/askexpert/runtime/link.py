"""Link emulation: the delay a real network link would add to an offload.

A link is a round-trip time plus a bandwidth; an offload of ``up`` request bytes and ``down``
response bytes costs ``rtt + 8 * (up + down) / bandwidth`` seconds on top of the real socket.
``--link wifi`` names a preset; ``--link rtt=20ms,bw=20mbit`` spells one out;
``--link trace:UP,DOWN[,rtt=40ms]`` follows two recorded cellular traces in Mahimahi's format
(:class:`TraceLink`: capacity that varies by the millisecond, a queue shared by consecutive offloads,
the propagation delay); ``--link wifi@0,lte@500``
is a schedule (:class:`LinkSchedule`): wifi from image 0, lte from image 500 on (and ``SIGUSR1`` to the
edge moves to the next entry at once: a link changed by a signal).
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from askexpert.errors import ConfigError


@dataclass(frozen=True)
class LinkProfile:
    name: str
    rtt_ms: float
    bandwidth_mbit: float

    def delay_s(self, up_bytes: int, down_bytes: int, **_when) -> float:
        """The same for every offload (``_when``: what a :class:`TraceLink` needs, ignored)."""
        return self.rtt_ms / 1000 + 8 * (up_bytes + down_bytes) / (self.bandwidth_mbit * 1e6)

    def describe(self) -> str:
        return f"{self.name} ({self.rtt_ms:g} ms RTT, {self.bandwidth_mbit:g} Mbit/s)"


# Typical figures for a device near its access point / cell; the presets of the benchmarks.
PRESETS = {
    "wifi": LinkProfile("wifi", rtt_ms=5, bandwidth_mbit=50),
    "lte": LinkProfile("lte", rtt_ms=40, bandwidth_mbit=10),
    "5g": LinkProfile("5g", rtt_ms=15, bandwidth_mbit=100),
    "ethernet": LinkProfile("ethernet", rtt_ms=0.5, bandwidth_mbit=1000),
}
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001}
_RATES = {"kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}


class LinkSchedule:
    """A link that changes during a run: ``entries`` of (first image, profile or None for no emulation),
    the first from image 0. It stands where a :class:`LinkProfile` does (``delay_s``, ``describe``) and
    delays by its entry in force: :meth:`at` moves it to an image (the edge runner calls it before each
    batch), :meth:`advance` to the next entry now (a signal), whichever is later."""

    def __init__(self, entries: list[tuple[int, Link | None]]) -> None:
        entries = sorted(entries, key=lambda e: e[0])
        if not entries or entries[0][0] != 0:
            raise ConfigError("a link schedule starts at image 0", fix="e.g. --link wifi@0,lte@500")
        if len({e[0] for e in entries}) != len(entries):
            raise ConfigError("a link schedule names one link an image", fix="e.g. --link wifi@0,lte@500")
        self.entries = entries
        self._scheduled = self._signalled = 0

    @property
    def current(self) -> Link | None:
        return self.entries[max(self._scheduled, self._signalled)][1]

    @property
    def name(self) -> str:
        return self.current.name if self.current is not None else "none"

    def at(self, image: int) -> None:
        self._scheduled = max(i for i, (start, _) in enumerate(self.entries) if start <= image)

    def advance(self, *_signal) -> None:
        """The next entry, now (a ``signal.signal`` handler as it is)."""
        self._signalled = min(max(self._scheduled, self._signalled) + 1, len(self.entries) - 1)

    def delay_s(self, up_bytes: int, down_bytes: int, **when) -> float:
        link = self.current
        return link.delay_s(up_bytes, down_bytes, **when) if link is not None else 0.0

    def describe(self) -> str:
        return ", then ".join(f"{link.describe() if link else 'none'} from image {start}"
                              for start, link in self.entries)


MTU = 1500  # bytes a delivery opportunity carries (Mahimahi's packet)


class Trace:
    """One direction of a recorded link (Mahimahi's format): ``ops_ms``, sorted, are the milliseconds at
    which one 1500-byte packet may cross; the schedule repeats every ``period_ms`` (its last timestamp),
    as ``mm-link`` repeats it. Opportunity ``j`` (counted over the repetitions) is at
    ``ops_ms[j % n] + (j // n) * period_ms``."""

    def __init__(self, ops_ms: np.ndarray, name: str) -> None:
        self.ops_ms, self.name = np.asarray(ops_ms, dtype=np.float64), name
        self.period_ms = float(self.ops_ms[-1])

    @property
    def mean_mbit(self) -> float:
        return len(self.ops_ms) * MTU * 8 / (self.period_ms * 1000)

    def time_ms(self, j: int) -> float:
        n = len(self.ops_ms)
        return float(self.ops_ms[j % n] + (j // n) * self.period_ms)

    def first_at(self, t_ms: float) -> int:
        """The first opportunity at or after ``t_ms`` (the repetition whose span ``(rep * period, (rep + 1) *
        period]`` holds it: its last opportunity, at the period, comes before the next one's first)."""
        rep = max(0, math.ceil(t_ms / self.period_ms) - 1)
        return rep * len(self.ops_ms) + int(np.searchsorted(self.ops_ms, t_ms - rep * self.period_ms, side="left"))

    def cross(self, t_ms: float, n_bytes: int, free: int) -> tuple[float, int]:
        """Send ``n_bytes`` at ``t_ms`` behind a queue whose first unused opportunity is ``free``: the
        millisecond its last packet leaves the queue, and the queue's next unused opportunity."""
        first = max(self.first_at(t_ms), free)
        last = first + max(1, math.ceil(n_bytes / MTU)) - 1
        return self.time_ms(last), last + 1


def read_trace(path: str | Path) -> Trace:
    """A Mahimahi trace file, checked line by line (a whole, non-negative, non-decreasing number of
    milliseconds each; at least one line; a last timestamp above 0, the repetition's period)."""
    path = Path(path)
    fix = "a Mahimahi trace has one whole number of milliseconds a line, in order (e.g. ../shared/traces/)"
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read link trace {path}: {err.strerror or err}", fix=fix) from err
    ops, last = [], 0
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text.isdigit():
            raise ConfigError(f"link trace {path} line {number}: {line[:40]!r} is not a whole number of "
                              "milliseconds", fix=fix)
        if int(text) < last:
            raise ConfigError(f"link trace {path} line {number}: {text} comes before the line above ({last}); "
                              "timestamps never go back", fix=fix)
        last = int(text)
        ops.append(last)
    if not ops or last <= 0:
        raise ConfigError(f"link trace {path} is empty" if not ops else
                          f"link trace {path} ends at 0 ms, so it has no period to repeat over", fix=fix)
    return Trace(np.asarray(ops), path.name)


class TraceLink:
    """A link whose capacity follows two recorded traces (uplink, downlink) plus a propagation delay.

    An offload sent at ``t`` (this link's clock: milliseconds since its first offload) crosses the uplink
    one packet an opportunity, behind the packets of earlier offloads still queued (one queue a direction,
    shared by this edge's consecutive offloads, as Mahimahi's), reaches the server half a round trip after
    its last packet leaves the queue, is answered after the server's time, and the answer crosses the
    downlink the same way. :meth:`delay_s` is what the link adds on top of the real round trip. A caller
    that does not sleep through that delay (a benchmark's accounting) passes ``slept=False``: the link's
    clock then runs ahead of the real one by the delays not slept, so the trace advances as it would have.
    Thread-safe: concurrent offloads take the queue in the order they report."""

    def __init__(self, up: Trace, down: Trace, rtt_ms: float, name: str) -> None:
        self.up, self.down, self.rtt_ms, self.name = up, down, rtt_ms, name
        self._lock = threading.Lock()
        self._origin: float | None = None
        self._ahead_ms = 0.0
        self._up_free = self._down_free = 0

    def __getstate__(self) -> dict:  # to an emulated edge's process: the queues and clock, not the lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def clock_ms(self, at_s: float) -> float:
        if self._origin is None:
            self._origin = at_s
        return (at_s - self._origin) * 1000 + self._ahead_ms

    def crossing_ms(self, t_ms: float, up_bytes: int, down_bytes: int, server_ms: float) -> float:
        """The link's time (both crossings and the round trip) for an offload sent at ``t_ms``, with the
        queues as they stand; advances them."""
        up_left, self._up_free = self.up.cross(t_ms, up_bytes, self._up_free)
        answered = up_left + self.rtt_ms / 2 + server_ms
        down_left, self._down_free = self.down.cross(answered, down_bytes, self._down_free)
        return down_left + self.rtt_ms / 2 - t_ms - server_ms

    def delay_s(self, up_bytes: int, down_bytes: int, *, sent_s: float | None = None, server_s: float = 0.0,
                slept: bool = True) -> float:
        """``sent_s``: when the request left (``time.perf_counter()``; default now); ``server_s``: the real
        round trip it took (the server's time as this link sees it)."""
        with self._lock:
            t = self.clock_ms(time.perf_counter() if sent_s is None else sent_s)
            delay = self.crossing_ms(t, up_bytes, down_bytes, server_s * 1000)
            if not slept:
                self._ahead_ms += delay
            return delay / 1000

    def sample_ms(self, up_bytes: int, down_bytes: int, n: int = 200) -> np.ndarray:
        """The link's time for one offload sent at ``n`` evenly spaced moments of the uplink's period, each
        on empty queues and an instant server: the spread a prediction draws from."""
        starts = (np.arange(n) + 0.5) * self.up.period_ms / n
        fresh = TraceLink(self.up, self.down, self.rtt_ms, self.name)
        out = []
        for t in starts:
            fresh._up_free = fresh._down_free = 0
            out.append(fresh.crossing_ms(float(t), up_bytes, down_bytes, 0.0))
        return np.asarray(out)

    def describe(self) -> str:
        return (f"{self.name} (recorded: {self.up.mean_mbit:.2f} / {self.down.mean_mbit:.2f} Mbit/s up / down on "
                f"average, repeating every {self.up.period_ms / 1000:g} / {self.down.period_ms / 1000:g} s; "
                f"{self.rtt_ms:g} ms RTT)")


Link = LinkProfile | TraceLink  # what a client adds to each offload

DEFAULT_TRACE_RTT_MS = 40.0  # the lte preset's round trip: the traces are cellular recordings


@cache
def _trace(path: str, mtime: float) -> Trace:
    return read_trace(path)


def parse_trace(text: str) -> TraceLink:
    """``trace:UP,DOWN[,rtt=40ms]`` (two trace files) or ``trace:STEM[,rtt=...]`` (``STEM.up`` and
    ``STEM.down``)."""
    fix = ("use trace:UP,DOWN[,rtt=40ms] (two Mahimahi trace files) or trace:STEM for STEM.up and STEM.down, "
           "e.g. trace:../shared/traces/TMobile-LTE-short")
    parts = [p.strip() for p in text.strip()[len("trace:"):].split(",")]
    rtt_ms = DEFAULT_TRACE_RTT_MS
    if parts and parts[-1].lower().startswith("rtt="):
        m = re.fullmatch(r"([0-9.]+)(ms|s|us)", parts.pop()[4:].lower())
        if not m:
            raise ConfigError(f"cannot read the round trip in link {text!r}", fix=fix)
        rtt_ms = float(m.group(1)) * _UNITS[m.group(2)]
    if len(parts) == 1 and parts[0]:
        parts = [parts[0] + ".up", parts[0] + ".down"]
    if len(parts) != 2 or not all(parts):
        named = sum(1 for p in parts if p)
        raise ConfigError(f"cannot read link {text!r}: it names {named or 'no'} trace file{'' if named == 1 else 's'}, "
                          "not two", fix=fix)
    for p in parts:
        if not Path(p).is_file():
            raise ConfigError(f"link trace {p} does not exist", fix=fix)
    up, down = (_trace(str(Path(p).resolve()), Path(p).stat().st_mtime) for p in parts)
    stem = up.name.removesuffix(".up")
    name = f"trace:{stem}" if down.name == f"{stem}.down" else f"trace:{up.name},{down.name}"
    return TraceLink(up, down, rtt_ms, name)


def parse_schedule(text: str) -> LinkSchedule:
    """``wifi@0,lte@500``, ``rtt=20ms,bw=20mbit@0,none@100``: each link (as :func:`parse_link` reads
    it) with the image it starts at."""
    entries, parts = [], []
    for token in text.split(","):
        parts.append(token)
        if "@" in token:
            spec, _, start = ",".join(parts).rpartition("@")
            if not start.strip().isdigit():
                raise ConfigError(f"cannot read the start {start!r} in link schedule {text!r}",
                                  fix="give each link the image it starts at: e.g. wifi@0,lte@500")
            entries.append((int(start), parse_link(spec)))
            parts = []
    if parts:
        raise ConfigError(f"link schedule {text!r} ends with {','.join(parts)!r}, which has no @IMAGE",
                          fix="give each link the image it starts at: e.g. wifi@0,lte@500")
    return LinkSchedule(entries)


def parse_link(text: str | None) -> Link | None:
    """``None``/``none`` -> no emulation; a preset name; ``rtt=20ms,bw=20mbit``; or a recorded link,
    ``trace:UP,DOWN[,rtt=40ms]`` (:func:`parse_trace`)."""
    if text is None or text.strip().lower() in ("", "none", "loopback"):
        return None
    if text.strip().lower().startswith("trace:"):
        return parse_trace(text)
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    fields = dict(part.split("=", 1) for part in key.split(",") if "=" in part)
    rtt_m = re.fullmatch(r"([0-9.]+)(ms|s|us)", fields.get("rtt", ""))
    bw_m = re.fullmatch(r"([0-9.]+)(kbit|mbit|gbit)", fields.get("bw", ""))
    if not rtt_m or not bw_m or set(fields) - {"rtt", "bw"}:
        raise ConfigError(f"cannot read link {text!r}",
                          fix=f"use a preset ({', '.join(PRESETS)}) or rtt=<n>ms,bw=<n>mbit, e.g. rtt=20ms,bw=20mbit")
    rtt = float(rtt_m.group(1)) * _UNITS[rtt_m.group(2)]
    bw = float(bw_m.group(1)) * _RATES[bw_m.group(2)]
    if bw <= 0:
        raise ConfigError(f"link bandwidth must be positive in {text!r}", fix="e.g. bw=20mbit")
    return LinkProfile(key, rtt_ms=rtt, bandwidth_mbit=bw)


def parse_link_arg(text: str | None) -> Link | LinkSchedule | None:
    """What ``--link`` says: a schedule when it names images (``wifi@0,lte@500``), else one link."""
    return parse_schedule(text) if text and "@" in text else parse_link(text)
