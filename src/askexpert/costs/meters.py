"""Energy meters behind one interface: measured where a counter exists, modelled where not.

Every reading says what it is: ``kind`` is ``measured`` or ``modelled`` and ``source`` names the
meter (NVML device, RAPL domain, Jetson rail) or the device profile and its public source.

* :class:`NvmlMeter`: NVIDIA GPUs' total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ,
  Volta and newer), via nvidia-ml-py.
* :class:`RaplMeter`: Intel/AMD RAPL package counters under ``/sys/class/powercap`` (µJ, wrapping
  at ``max_energy_range_uj``).
* :class:`JetsonMeter`: the INA3221 power rails of NVIDIA Jetson boards (hwmon ``in*_input`` mV and
  ``curr*_input`` mA), sampled by a background thread and integrated.
* :class:`ModelledMeter`: a device profile's active power times the busy time it is told about.
"""

from __future__ import annotations

import glob
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from askexpert.costs.profiles import DeviceProfile


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    seconds: float
    kind: str  # "measured" or "modelled"
    source: str

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


class MeterUnavailable(RuntimeError):
    """This meter has no counter on this machine; the message says what is missing."""


class NvmlMeter:
    kind = "measured"

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml
        except ImportError as err:
            raise MeterUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from err
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.device = pynvml.nvmlDeviceGetName(self._handle)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as err:
            raise MeterUnavailable(f"no NVML energy counter on GPU {index} ({err})") from err
        self._nvml = pynvml
        self.source = f"NVML total energy, GPU {index} ({self.device})"
        self._start: tuple[float, float] | None = None

    def _read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def start(self) -> None:
        self._start = (self._read_j(), time.perf_counter())

    def stop(self) -> EnergyReading:
        j0, t0 = self._start
        return EnergyReading(self._read_j() - j0, time.perf_counter() - t0, self.kind, self.source)


class RaplMeter:
    kind = "measured"

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        zones = sorted(Path(p) for p in glob.glob(str(root / "intel-rapl:*")) if ":" not in Path(p).name[11:])
        readable = [z for z in zones if (z / "energy_uj").is_file()]
        try:
            for z in readable:
                int((z / "energy_uj").read_text())
        except (OSError, ValueError) as err:
            raise MeterUnavailable(f"RAPL counters under {root} are not readable ({err}); try root") from err
        if not readable:
            raise MeterUnavailable(f"no RAPL package counters under {root}")
        self.zones = readable
        names = [(z / "name").read_text().strip() if (z / "name").is_file() else z.name for z in readable]
        self.source = f"RAPL {', '.join(names)} ({root})"
        self._ranges = [int((z / "max_energy_range_uj").read_text()) if (z / "max_energy_range_uj").is_file()
                        else 2**32 for z in readable]
        self._start: tuple[list[int], float] | None = None

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    def start(self) -> None:
        self._start = (self._read(), time.perf_counter())

    def stop(self) -> EnergyReading:
        before, t0 = self._start
        after = self._read()
        uj = sum((a - b) % r for a, b, r in zip(after, before, self._ranges, strict=True))  # counters wrap
        return EnergyReading(uj / 1e6, time.perf_counter() - t0, self.kind, self.source)


class JetsonMeter:
    kind = "measured"

    def __init__(self, root: Path = Path("/sys/bus/i2c/drivers/ina3221"), interval_s: float = 0.01) -> None:
        rails = []
        for volt in sorted(glob.glob(str(root / "*" / "hwmon" / "hwmon*" / "in*_input"))):
            channel = Path(volt).name[2:-6]
            curr = Path(volt).with_name(f"curr{channel}_input")
            label = Path(volt).with_name(f"in{channel}_label")
            if curr.is_file():
                rails.append((Path(volt), curr, label.read_text().strip() if label.is_file() else f"rail {channel}"))
        if not rails:
            raise MeterUnavailable(f"no Jetson INA3221 power rails under {root}")
        self.rails, self.interval_s = rails, interval_s
        self.source = f"Jetson INA3221 rails: {', '.join(r[2] for r in rails)}"
        self._joules, self._stop, self._thread, self._t0 = 0.0, threading.Event(), None, 0.0

    def power_w(self) -> float:
        return sum(int(v.read_text()) * int(c.read_text()) for v, c, _ in self.rails) / 1e6  # mV * mA

    def _sample(self) -> None:
        last_t, last_p = time.perf_counter(), self.power_w()
        while not self._stop.wait(self.interval_s):
            t, p = time.perf_counter(), self.power_w()
            self._joules += (p + last_p) / 2 * (t - last_t)  # trapezoids
            last_t, last_p = t, p

    def start(self) -> None:
        self._joules, self._t0 = 0.0, time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> EnergyReading:
        self._stop.set()
        self._thread.join()
        return EnergyReading(self._joules, time.perf_counter() - self._t0, self.kind, self.source)


class ModelledMeter:
    """Energy = the profile's active power x the busy time reported with :meth:`add_busy`."""

    kind = "modelled"

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.source = f"profile {profile.name}: {profile.active_w} W active ({profile.source})"
        self._busy, self._t0 = 0.0, 0.0

    def start(self) -> None:
        self._busy, self._t0 = 0.0, time.perf_counter()

    def add_busy(self, seconds: float) -> None:
        self._busy += seconds

    def stop(self) -> EnergyReading:
        return EnergyReading(self.profile.energy_j(self._busy), time.perf_counter() - self._t0, self.kind, self.source)


def measured_meter(preference: tuple[str, ...] = ("nvml", "jetson", "rapl")):
    """The first measured meter available here, or ``(None, reasons)`` naming why each is not."""
    reasons = []
    makers = {"nvml": NvmlMeter, "jetson": JetsonMeter, "rapl": RaplMeter}
    for name in preference:
        try:
            return makers[name](), reasons
        except MeterUnavailable as err:
            reasons.append(f"{name}: {err}")
    return None, reasons
