"""The kernel's CPU bandwidth control (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``): one cgroup
that caps a process to a fraction of one core, the way ``docker run --cpus=0.1`` does.

:func:`find_controller` returns the first writable CPU controller (v2, then v1) or says why there is
none; a :class:`CpuCgroup` is created, given a quota, joined by processes and removed (its processes
moved back to the root first). Cgroups this module creates are named ``askexpert-<pid>-<n>``;
:func:`remove_stale` removes those whose creating process is gone (a run killed with SIGKILL).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

PREFIX = "askexpert-"
MIN_QUOTA_US = 1000  # the kernel refuses smaller quotas and periods
_counter = itertools.count()


@dataclass(frozen=True)
class Controller:
    version: int  # 1 or 2
    root: Path

    def describe(self) -> str:
        knob = "cpu.max" if self.version == 2 else "cpu.cfs_quota_us / cpu.cfs_period_us"
        return f"cgroup v{self.version} CPU controller at {self.root} ({knob})"


def _mounts() -> list[tuple[str, str, str]]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))
    return out


def _writable(path: Path) -> bool:
    probe = path / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def find_controller() -> tuple[Controller | None, str]:
    """The first writable CPU controller, or ``None`` and the reason there is none."""
    reasons = []
    for mountpoint, fstype, _ in _mounts():
        if fstype != "cgroup2":
            continue
        root = Path(mountpoint)
        listing = root / "cgroup.controllers"
        controllers = listing.read_text().split() if listing.is_file() else []
        if "cpu" not in controllers:
            reasons.append(f"cgroup v2 at {root} has no cpu controller (it is bound to a v1 hierarchy)")
            continue
        try:
            (root / "cgroup.subtree_control").write_text("+cpu")
        except OSError as err:
            reasons.append(f"cannot enable the cpu controller in {root}/cgroup.subtree_control ({err.strerror})")
            continue
        if _writable(root):
            return Controller(2, root), ""
        reasons.append(f"{root} is not writable")
    for mountpoint, fstype, options in _mounts():
        if fstype == "cgroup" and "cpu" in options.split(","):
            root = Path(mountpoint)
            if not (root / "cpu.cfs_quota_us").is_file():
                reasons.append(f"{root} has no cpu.cfs_quota_us (CFS bandwidth control not built in)")
            elif _writable(root):
                return Controller(1, root), ""
            else:
                reasons.append(f"cgroup v1 cpu hierarchy at {root} is not writable (run as root)")
    return None, "; ".join(reasons) or "no cgroup CPU controller is mounted"


class CpuCgroup:
    """One cgroup with a CPU quota; ``remove()`` moves its processes out and deletes it."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.path = controller.root / f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.path.mkdir()
        self.quota_us: int | None = None
        self.period_us: int | None = None

    def set_quota(self, fraction: float, period_us: int) -> None:
        """Cap the group to ``fraction`` of one core, enforced every ``period_us``."""
        quota = max(int(round(fraction * period_us)), MIN_QUOTA_US)
        if self.controller.version == 2:
            (self.path / "cpu.max").write_text(f"{quota} {period_us}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        self.quota_us, self.period_us = quota, period_us

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def throttled(self) -> dict[str, int]:
        """The kernel's own counters: periods, throttled periods, time throttled (ns or us)."""
        try:
            return {k: int(v) for k, v in (line.split() for line in (self.path / "cpu.stat").read_text().splitlines())}
        except (OSError, ValueError):
            return {}

    def remove(self) -> None:
        if not self.path.exists():
            return
        _evacuate(self.path, self.controller.root)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _evacuate(path: Path, root: Path) -> None:
    for _ in range(3):  # a process may fork while it is moved
        pids = (path / "cgroup.procs").read_text().split() if (path / "cgroup.procs").is_file() else []
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):  # exited meanwhile
                (root / "cgroup.procs").write_text(pid)


def remove_stale(controller: Controller) -> list[Path]:
    """Remove the cgroups of askexpert runs whose process is gone; the paths removed."""
    removed = []
    for path in controller.root.glob(f"{PREFIX}*"):
        owner = path.name[len(PREFIX):].split("-")[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        _evacuate(path, controller.root)
        try:
            path.rmdir()
            removed.append(path)
        except OSError:
            pass
    return removed
