"""Where the edge and the server run on one host, and how slow the edge is made.

``with EmulatedEdge("rpi4") as edge:`` starts the edge's own process on one core
(``sched_setaffinity``), times the device profile's reference workload there at full speed, and slows
the process to the device (:class:`Placement` records how, with target vs achieved). ``edge.call(fn,
**kw)`` runs ``fn`` in that process; ``edge.server_cores`` is where the expert server belongs
(:class:`askexpert_lab.testbed.server.ServerProcess` ``cpus=``).

Modes. ``model`` (``auto``'s choice): the profile's device model (:mod:`askexpert.costs.device_model`,
fitted to its published table) becomes the edge's pacer (:class:`askexpert_lab.testbed.pacing.DevicePacer`),
passed with every call: every model call lasts its prediction and other work is dilated by the device's
sysbench figure against the host's. The older one-ratio emulation: ``kernel`` puts the process under a
CPU quota (cgroup v2 or v1) so the reference runs as fast as the device's figure, with each model call
floored at its CPU time x that ratio (:class:`~askexpert_lab.testbed.pacing.RatioPacer`); ``paced`` keeps the
floor alone (no writable controller needed). ``"host"``: the edge in the calling process, unthrottled.

Any cgroup is removed, and the edge process stopped, on normal exit, on an exception and on
SIGINT/SIGTERM (the handler turns SIGTERM into ``SystemExit`` while the placement is open)."""

from __future__ import annotations

import atexit
import inspect
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

from askexpert.costs.profiles import SpeedProfile, edge_speed
from askexpert.costs.references import ensure_reference
from askexpert.errors import AskExpertError
from askexpert.runtime.pacing import NO_PACING, Pacer
from askexpert_lab.testbed.cgroups import CpuCgroup, find_controller, remove_stale
from askexpert_lab.testbed.pacing import DevicePacer, RatioPacer

Mode = Literal["auto", "model", "kernel", "paced"]
DEFAULT_PERIOD_US = 5_000
TOLERANCE = 0.10  # correct the speed when a check is further than this from the device (the host drifts)

LABELS = {"host": "host CPU (no edge emulation)", "device-model": "emulated edge (device model)",
          "kernel-throttled": "emulated edge (kernel-throttled)", "paced": "emulated edge (paced)"}


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@dataclass
class Placement:
    """How the edge and the server were placed and how fast the edge was made, with what was measured."""

    device: str
    mode: str  # host | device-model | kernel-throttled | paced
    edge_cores: list[int]
    server_cores: list[int]
    description: str = "the host's CPU"
    source: str | None = None
    controller: str | None = None
    why_not_kernel: str | None = None
    reference: str | None = None
    device_ms: float | None = None  # the published figure
    host_ms: float | None = None  # the reference at full speed on the edge core
    achieved_ms: float | None = None  # the reference on the emulated edge
    quota_us: int | None = None
    period_us: int | None = None
    pace_factor: float | None = None
    adjustments: list[dict] = field(default_factory=list)  # corrections: when, before and after
    checks: list[dict] = field(default_factory=list)  # every calibration check (the bench: one per measurement)
    device_model: dict | None = None  # device-model mode: the fitted op-class costs
    scalar_ratio: float | None = None  # device-model mode: how much slower the device runs scalar code
    scalar_host_eps: float | None = None  # sysbench cpu on the edge core, events/s
    caveat: str | None = None  # what every report using this placement must say about its device model

    @property
    def label(self) -> str:
        return LABELS[self.mode]

    @property
    def target_slowdown(self) -> float | None:
        return self.device_ms / self.host_ms if self.device_ms and self.host_ms else None

    @property
    def achieved_slowdown(self) -> float | None:
        return self.achieved_ms / self.host_ms if self.achieved_ms and self.host_ms else None

    @property
    def error_pct(self) -> float | None:
        return 100 * (self.achieved_ms / self.device_ms - 1) if self.achieved_ms and self.device_ms else None

    DERIVED = ("label", "target_slowdown", "achieved_slowdown", "error_pct")

    def to_dict(self) -> dict:
        return {**asdict(self), **{k: getattr(self, k) for k in self.DERIVED}}

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        return cls(**{k: v for k, v in d.items() if k not in cls.DERIVED})

    def describe(self) -> str:
        if self.mode == "host":
            return f"{self.label}: edge and server share the host's cores {self.edge_cores}"
        if self.mode == "device-model":
            scalar = (f"other edge work dilated x{self.scalar_ratio:.2f} (sysbench cpu: {self.scalar_host_eps:.0f} "
                      f"events/s on the edge core)" if self.scalar_ratio and self.scalar_ratio > 1
                      else "other edge work at the host's speed (no sourced scalar figure for this device)")
            return (f"{self.label} as {self.device} ({self.description}): edge on core(s) {self.edge_cores}, server "
                    f"on core(s) {self.server_cores}; each model call lasts the device model's prediction (op "
                    f"classes fitted to {len(self.device_model['fitted_on'])} published models), {scalar}; "
                    f"{self.reference} {self.host_ms:.1f} ms on the host -> {self.achieved_ms:.1f} ms emulated vs "
                    f"{self.device_ms:.1f} ms published ({self.error_pct:+.1f}%)"
                    + (f". Caveat: {self.caveat}" if self.caveat else ""))
        how = (f"{self.controller}, quota {self.quota_us} us every {self.period_us} us "
               f"({100 * self.quota_us / self.period_us:.1f}% of a core), each model call at least its CPU time "
               f"x{self.pace_factor:.2f}" if self.mode == "kernel-throttled"
               else f"paced x{self.pace_factor:.2f} (no writable CPU controller: {self.why_not_kernel})")
        return (f"{self.label} as {self.device} ({self.description}): edge on core(s) {self.edge_cores}, server on "
                f"core(s) {self.server_cores}; {how}; {self.reference} {self.host_ms:.1f} ms at full speed -> "
                f"{self.achieved_ms:.1f} ms emulated vs {self.device_ms:.1f} ms published ({self.error_pct:+.1f}%), "
                f"slowdown x{self.achieved_slowdown:.2f} (target x{self.target_slowdown:.2f})")


class DeviceTooFast(AskExpertError):
    pass


def sysbench_events_per_s(cores: list[int], seconds: int = 2) -> float:
    """sysbench 1.0's single-thread CPU benchmark on ``cores`` (events per second): the host's side of
    the device's scalar slowdown."""
    import shutil

    exe = shutil.which("sysbench")
    if exe is None:
        raise AskExpertError("the emulated edge slows its non-model work by the device's sysbench figure, and "
                             "sysbench is not installed", fix="apt-get install sysbench (Debian/Ubuntu), or "
                             "--edge-mode paced (model calls only)")
    command = [exe, "cpu", "--threads=1", f"--time={seconds}", "run"]
    if shutil.which("taskset"):  # on the edge core, where the edge's own work will run
        command = ["taskset", "-c", ",".join(map(str, cores)), *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60 + seconds, check=True).stdout
    for line in out.splitlines():
        if "events per second" in line:
            return float(line.split(":")[1])
    raise AskExpertError(f"sysbench printed no 'events per second': {out[-300:]}", fix="check `sysbench cpu run`")


class EmulatedEdge:
    """The edge's process and its placement; a context manager that always cleans up."""

    def __init__(self, device: str | SpeedProfile = "host", *, mode: Mode = "auto",
                 period_us: int = DEFAULT_PERIOD_US, calibration_runs: int = 11) -> None:
        """``device``: ``host``, a speed profile's name (``costs/profiles.yaml``) or a :class:`SpeedProfile`."""
        if mode not in ("auto", "model", "kernel", "paced"):
            raise AskExpertError(f"unknown emulation mode {mode!r}", fix="use auto (= model), model, kernel or paced")
        self.profile = (device.check() if isinstance(device, SpeedProfile)
                        else None if device == "host" else edge_speed(device))
        device = self.profile.name if self.profile else "host"
        self.device, self.mode, self.period_us, self.runs = device, mode, period_us, calibration_runs
        cores = _cores()  # host, or a single core: edge and server share them (said in the placement)
        self.edge_cores, self.server_cores = ((cores[:1], cores[1:]) if self.profile and len(cores) >= 2
                                              else (cores, cores))
        self.placement = Placement(device, "host", self.edge_cores, self.server_cores)
        self.cgroup: CpuCgroup | None = None
        self.pacer: Pacer = NO_PACING  # set by calibration: the device's pace, sent with every call
        self._process = None
        self._conn = None
        self._previous_sigterm = None
        self._closed = False
        self._fraction, self._period = 1.0, period_us

    # ---- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> EmulatedEdge:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> Placement:
        if self.profile is None:
            return self.placement
        self._install_signal_handler()
        atexit.register(self.close)
        try:
            self._start_worker()
            self._calibrate()
        except BaseException:
            self.close()
            raise
        return self.placement

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.send(("stop",))
                if self._conn.poll(5):
                    self._conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        if self.cgroup is not None:
            self.cgroup.remove()
        self._restore_signal_handler()
        atexit.unregister(self.close)

    def _install_signal_handler(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame):
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_signal_handler(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _start_worker(self) -> None:
        """``python -m askexpert_lab.testbed.worker`` on a socket pair (not multiprocessing's spawn, which
        would re-run the caller's main module)."""
        parent, child = socket.socketpair()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "askexpert_lab.testbed.worker", str(child.fileno()),
             ",".join(map(str, self.edge_cores))], pass_fds=(child.fileno(),), env=env)
        child.close()
        self._conn = Connection(parent.detach())

    @property
    def threads(self) -> int | None:
        """The threads a model runs on the emulated edge: one. The edge is one core slowed until the
        reference runs there, on one thread, as fast as the device's published figure (taken at the
        device's own thread count): that one core stands for the whole device, and more threads on it
        only contend (ONNX Runtime's spinning threads eat the quota: DeiT-Tiny at 4 threads took 4.5x
        its one-thread time). None on the host (the caller's own choice)."""
        return 1 if self.profile is not None else None

    def energy_profile(self, default: str) -> str:
        """The emulated device's own energy profile (costs/profiles.yaml), else ``default``."""
        return (self.profile.energy_profile if self.profile else None) or default

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ---- requests -----------------------------------------------------------------------------
    def _request(self, *message) -> Any:
        self._conn.send(message)
        status, *rest = self._conn.recv()
        if status == "error":
            raise rest[0]
        return rest[0]

    def call(self, fn: Callable[..., Any], **kwargs) -> Any:
        """``fn(**kwargs)`` on the edge (its process when emulated; here for ``host``), with ``pacer=`` this
        edge's pacer when ``fn`` takes one (every function that runs the edge's models does)."""
        if "pacer" in inspect.signature(fn).parameters:
            kwargs = {"pacer": self.pacer, **kwargs}
        if self.profile is None:
            return fn(**kwargs)
        return self._request("call", fn, kwargs)

    def reference_ms(self, runs: int | None = None) -> float:
        """The reference workload's median wall-clock time on the edge, as it is placed now."""
        return self.reference_times(runs)[0]

    def reference_times(self, runs: int | None = None) -> tuple[float, float]:
        """Median wall-clock and CPU milliseconds of the reference workload on the edge."""
        return self.graph_times(self._reference_path, runs)

    def graph_times(self, path, runs: int | None = None) -> tuple[float, float]:
        """Median wall-clock and CPU milliseconds of one batch-1 call of the ONNX graph at ``path`` on the edge
        (random input, after two warm-up calls)."""
        return self._request("reference", path, runs or self.runs, self.pacer)

    # ---- calibration --------------------------------------------------------------------------
    def _calibrate(self) -> None:
        p, profile = self.placement, self.profile
        self._reference_path = ensure_reference(profile.reference)
        p.description, p.source, p.reference = profile.description, profile.source, profile.reference
        p.device_ms = profile.reference_ms
        p.host_ms, host_cpu = self.reference_times()
        if p.host_ms >= p.device_ms:
            raise DeviceTooFast(f"{self.device} runs {profile.reference} in {p.device_ms:.1f} ms, this host's edge "
                                f"core in {p.host_ms:.1f} ms: a faster device cannot be emulated by slowing this one",
                                fix="pick a slower device profile or --edge-device host")
        if self.mode in ("auto", "model"):
            self._use_device_model()
            self.recalibrate("start")
            return
        controller, why = (None, "paced mode asked for") if self.mode == "paced" else find_controller()
        if controller is None and self.mode == "kernel":
            raise AskExpertError(f"no writable CPU controller: {why}", fix="run as root, or use the paced mode")
        if controller is None:
            p.mode, p.why_not_kernel = "paced", why
        else:
            remove_stale(controller)
            self.cgroup = CpuCgroup(controller)
            p.mode, p.controller = "kernel-throttled", controller.describe()
            self._fraction = p.host_ms / p.device_ms
            self._period = max(self.period_us, math.ceil(1000 / self._fraction))
            self.cgroup.set_quota(self._fraction, self._period)
            self.cgroup.add(self.pid)
        self._set_pace(p.device_ms / host_cpu)
        self.recalibrate("start")

    def _use_device_model(self) -> None:
        """Every model call at the device model's prediction, other work dilated by the scalar ratio."""
        p, profile = self.placement, self.profile
        model = profile.device_model()
        p.mode, p.device_model, p.caveat = "device-model", model.to_dict(), profile.caveat
        p.scalar_ratio, p.scalar_host_eps = 1.0, None
        if profile.scalar:
            p.scalar_host_eps = sysbench_events_per_s(self.edge_cores)
            p.scalar_ratio = max(p.scalar_host_eps / float(profile.scalar["events_per_s"]), 1.0)
        self.pacer = DevicePacer(model, p.scalar_ratio)

    def _set_pace(self, factor: float) -> None:
        self.placement.pace_factor = factor
        self.pacer = RatioPacer(factor)

    def recalibrate(self, at: str) -> float | None:
        """Measure the reference on the edge as placed now and bring it back to the device's figure.

        The host's own speed drifts (shared machines), so the bench calls this before every
        measurement. Two knobs: the pace factor (each model call lasts at least its CPU time x the
        factor; under a kernel quota a floor against full-speed bursts after an idle wait, without
        one the whole emulation) and, under a quota, its fraction of a core. Returns the achieved
        time (None for ``host``); every check is kept in ``placement.checks``.
        """
        if self.profile is None:
            return None
        p = self.placement
        wall, cpu = self.reference_times()
        if p.mode == "device-model":  # nothing to correct: a call lasts its prediction unless the host is slower
            p.achieved_ms = wall
            p.checks.append({"at": at, "achieved_ms": wall})
            return wall
        if abs(wall / p.device_ms - 1) > TOLERANCE:
            first = wall
            self._set_pace(p.device_ms / cpu)
            if self.cgroup is not None and wall > p.device_ms:  # the quota itself is too tight
                self._fraction = min(self._fraction * wall / p.device_ms, 1.0)
                self.cgroup.set_quota(self._fraction, self._period)
            wall, cpu = self.reference_times()
            p.adjustments.append({"at": at, "before_ms": first, "after_ms": wall})
        p.achieved_ms = wall
        if self.cgroup is not None:
            p.quota_us, p.period_us = self.cgroup.quota_us, self.cgroup.period_us
        p.checks.append({"at": at, "achieved_ms": wall, "pace_factor": p.pace_factor, "quota_us": p.quota_us})
        return wall
