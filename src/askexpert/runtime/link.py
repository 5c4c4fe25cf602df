"""Link emulation: the delay a real network link would add to an offload.

A link is a round-trip time plus a bandwidth; an offload of ``up`` request bytes and ``down``
response bytes costs ``rtt + 8 * (up + down) / bandwidth`` seconds on top of the real socket.
``--link wifi`` names a preset; ``--link rtt=20ms,bw=20mbit`` spells one out.
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
