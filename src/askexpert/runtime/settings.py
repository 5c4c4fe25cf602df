"""An edge session's settings as five typed groups, each passed whole to what it concerns.

:class:`EdgeSettings` holds the system, the thread count and the groups: :class:`Connection` (how the
experts are reached: servers, protocol, timeouts, retries, the link, the image encoding), :class:`Security`
(token, certificate authority, the pinned system id), :class:`Control` (the operating point's overrides
and the target that holds it), :class:`Inputs` (what is streamed) and :class:`Outputs` (what is written).
``askexpert edge`` builds each group from its own argument group; :meth:`EdgeSettings.with_` changes a few
fields by name without spelling their group (a benchmark's sweep, a test's variant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from askexpert.contract.codecs import Encoding
from askexpert.contract.protocol import RAW
from askexpert.corruptions import Corruption
from askexpert.runtime.link import Link, LinkSchedule

if TYPE_CHECKING:
    from askexpert.contract.bundle import System


@dataclass(frozen=True)
class Connection:
    """How the edge reaches its experts."""

    server: str | list[str] | None = None  # one expert server's URL, or several (each expert asked where it is)
    protocol: str = "v1"  # "v1": askexpert's server; "v2": any Open Inference Protocol server (a bundle's)
    timeout_s: float = 2.0  # each network wait of an attempt
    retries: int = 1
    deadline_s: float | None = None  # one offload, retries included (None: (retries + 1) * timeout_s)
    link: Link | LinkSchedule | None = None  # a schedule changes it during the run (and on SIGUSR1)
    encoding: Encoding = RAW  # how offloaded images travel (contract.codecs.CODECS)

    @property
    def urls(self) -> list[str]:
        return [self.server] if isinstance(self.server, str) else list(self.server or [])


@dataclass(frozen=True)
class Security:
    """Whom the edge trusts, and how it proves itself."""

    token: str | None = field(default=None, repr=False)  # the server's bearer token (never printed)
    ca_file: Path | None = None  # the authority of an https server's certificate
    expect_system_id: str | None = None  # the published sha256 of the bundle's system.json
    trust_unpinned: bool = False  # v2: use a server whose models do not name this bundle's system id


@dataclass(frozen=True)
class Control:
    """The operating point: overrides of the bundle's routing, and at most one target that moves tau."""

    tau: float | None = None
    temperature: float | None = None
    k: int | None = None
    confidence: str | None = None
    fallback: str | None = None
    slo_p95_ms: float | None = None  # hold a p95 latency: tau moves along the bundle's curve
    energy_budget_mj: float | None = None  # hold an edge energy an image (with energy_profile and radio)
    target_offload: float | None = None  # hold the offload share (0..1), label-free
    target_accuracy: float | None = None  # hold the kept answers' accuracy (0..1), from the experts' answers
    probe: float = 0.05  # with target_accuracy: the share of kept images offloaded anyway, to check them
    energy_profile: str = "raspberry-pi-4"  # the edge's power (costs/profiles.yaml) for --energy-budget
    radio: str = "wifi"


@dataclass(frozen=True)
class Inputs:
    """What the edge streams."""

    sources: list[str] = field(default_factory=lambda: ["split:test"])
    corrupt: Corruption | None = None  # drifted inputs: a corruption applied to the stream
    batch_size: int = 1
    limit: int | None = None


@dataclass(frozen=True)
class Outputs:
    """What the edge writes, as it answers."""

    trace: Path | None = None
    predictions: Path | None = None
    resume: bool = False  # go on from the answers already in predictions / trace


GROUPS = {"connection": Connection, "security": Security, "control": Control, "inputs": Inputs, "outputs": Outputs}
_GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
_SUMMARY_NAME = {"protocol": "server_protocol", "sources": "inputs"}  # a summary's keys, as they were written


@dataclass(frozen=True)
class EdgeSettings:
    """One edge session: the system it runs and its five groups of settings."""

    system: Path | System | object  # a bundle (path or opened), or a calibrated generalist run
    connection: Connection = Connection()
    security: Security = Security()
    control: Control = Control()
    inputs: Inputs = Inputs()
    outputs: Outputs = Outputs()
    threads: int | None = None

    def with_(self, **changes) -> EdgeSettings:
        """These settings with fields changed by name, each in its group (``with_(link=..., limit=None)``)."""
        top = {k: v for k, v in changes.items() if k in ("system", "threads")}
        grouped: dict[str, dict] = {}
        for name, value in changes.items():
            if name in top:
                continue
            if name not in _GROUP_OF:
                raise TypeError(f"no edge setting {name!r}; the groups hold: {', '.join(sorted(_GROUP_OF))}")
            grouped.setdefault(_GROUP_OF[name], {})[name] = value
        return replace(self, **top, **{g: replace(getattr(self, g), **kw) for g, kw in grouped.items()})

    def described(self) -> dict[str, str]:
        """Every setting as text, for a summary: the system named by its directory, the token never written."""
        system = getattr(self.system, "root", getattr(self.system, "run_dir", self.system))
        flat = {"system": str(system), "threads": str(self.threads)}
        for group in GROUPS:
            for name, value in asdict(getattr(self, group)).items():
                flat[_SUMMARY_NAME.get(name, name)] = ("(set)" if value else "None") if name == "token" else str(value)
        return flat
