"""Link emulation: the delay a real network link would add to an offload.

A link is a round-trip time plus a bandwidth; an offload of ``up`` request bytes and ``down``
response bytes costs ``rtt + 8 * (up + down) / bandwidth`` seconds on top of the real socket.
``--link wifi`` names a preset; ``--link rtt=20ms,bw=20mbit`` spells one out; ``--link wifi@0,lte@500``
is a schedule (:class:`LinkSchedule`): wifi from image 0, lte from image 500 on (and ``SIGUSR1`` to the
edge moves to the next entry at once: a link changed by a signal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from askexpert.errors import ConfigError


@dataclass(frozen=True)
class LinkProfile:
    name: str
    rtt_ms: float
    bandwidth_mbit: float

    def delay_s(self, up_bytes: int, down_bytes: int) -> float:
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

    def __init__(self, entries: list[tuple[int, LinkProfile | None]]) -> None:
        entries = sorted(entries, key=lambda e: e[0])
        if not entries or entries[0][0] != 0:
            raise ConfigError("a link schedule starts at image 0", fix="e.g. --link wifi@0,lte@500")
        if len({e[0] for e in entries}) != len(entries):
            raise ConfigError("a link schedule names one link an image", fix="e.g. --link wifi@0,lte@500")
        self.entries = entries
        self._scheduled = self._signalled = 0

    @property
    def current(self) -> LinkProfile | None:
        return self.entries[max(self._scheduled, self._signalled)][1]

    @property
    def name(self) -> str:
        return self.current.name if self.current is not None else "none"

    def at(self, image: int) -> None:
        self._scheduled = max(i for i, (start, _) in enumerate(self.entries) if start <= image)

    def advance(self, *_signal) -> None:
        """The next entry, now (a ``signal.signal`` handler as it is)."""
        self._signalled = min(max(self._scheduled, self._signalled) + 1, len(self.entries) - 1)

    def delay_s(self, up_bytes: int, down_bytes: int) -> float:
        link = self.current
        return link.delay_s(up_bytes, down_bytes) if link is not None else 0.0

    def describe(self) -> str:
        return ", then ".join(f"{link.describe() if link else 'none'} from image {start}"
                              for start, link in self.entries)


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


def parse_link(text: str | None) -> LinkProfile | None:
    """``None``/``none`` -> no emulation; a preset name; or ``rtt=20ms,bw=20mbit``."""
    if text is None or text.strip().lower() in ("", "none", "loopback"):
        return None
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


def parse_link_arg(text: str | None) -> LinkProfile | LinkSchedule | None:
    """What ``--link`` says: a schedule when it names images (``wifi@0,lte@500``), else one link."""
    return parse_schedule(text) if text and "@" in text else parse_link(text)
