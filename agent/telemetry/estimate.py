"""The last resort when no sensor is readable: CPU utilization × a per-CPU-class power model.

Every figure from this source has method `estimated_from_utilization` and provenance `estimated`.
The model is per logical CPU (a hardware thread, or a VM's vCPU), from vendors' TDPs divided by
thread counts: it says roughly how much a run costs, not what this device drew.
"""

import dataclasses
import re
import time
from collections.abc import Callable

import psutil

from fleetfit.agent.telemetry.source import PowerReading, PowerSource, SampleSkipped

METHOD = "estimated_from_utilization"


@dataclasses.dataclass(frozen=True)
class CpuPowerClass:
    name: str
    idle_w_per_cpu: float
    busy_w_per_cpu: float


# First match on the CPU model string wins. Busy figures: e.g. Xeon 8380 270 W / 80 threads,
# EPYC 9654 360 W / 192 threads; Core i9-13900K 253 W / 32; Raspberry Pi 5's 4 × A76 ~6 W.
CPU_CLASSES = (
    (r"Xeon|EPYC|Opteron|Neoverse|Altra|Graviton", CpuPowerClass("server", 0.5, 3.0)),
    (r"Apple M\d", CpuPowerClass("apple-silicon", 0.1, 2.5)),
    (r"Core\(TM\).*-\d{4,5}(U|H|HS|HX|P|G\d)\b|Core\(TM\) Ultra|Ryzen.*\d{4}(U|H|HS|HX)\b", CpuPowerClass("laptop", 0.2, 2.5)),
    (r"Core|Ryzen|Pentium|Celeron|Athlon", CpuPowerClass("desktop", 1.0, 7.0)),
    (r"Raspberry Pi|Cortex|ARMv[78]|Rockchip|Tegra|Orin|Jetson|BCM2", CpuPowerClass("arm-board", 0.15, 1.5)),
)
UNKNOWN_CLASS = CpuPowerClass("unknown", 0.5, 4.0)


def cpu_power_class(cpu_model: str) -> CpuPowerClass:
    for pattern, power_class in CPU_CLASSES:
        if re.search(pattern, cpu_model):
            return power_class
    return UNKNOWN_CLASS


def busy_and_total_s(times) -> tuple[float, float]:
    """CPU seconds busy and in all, from psutil.cpu_times() (guest time is already inside user)."""
    total = sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)
    return total - times.idle - getattr(times, "iowait", 0), total


class UtilizationEstimateSource(PowerSource):
    method = METHOD
    scope = "cpu"
    max_rate_hz = 20.0  # /proc/stat advances in 10 ms ticks: faster windows hold too few

    def __init__(self, cpu_model: str, logical_cpus: int | None = None, cpu_times: Callable = psutil.cpu_times):
        self.power_class = cpu_power_class(cpu_model)
        self.cpus = logical_cpus or psutil.cpu_count() or 1
        self.name = f"estimate {self.power_class.name} x {self.cpus} CPUs"
        self.cpu_times = cpu_times
        self.last = busy_and_total_s(cpu_times())

    def read(self) -> PowerReading:
        busy, total = busy_and_total_s(self.cpu_times())
        busy_delta, total_delta = busy - self.last[0], total - self.last[1]
        self.last = (busy, total)
        if total_delta <= 0:
            raise SampleSkipped("no CPU time elapsed since the last read")
        utilization = min(max(busy_delta / total_delta, 0.0), 1.0)
        model = self.power_class
        power_w = self.cpus * (model.idle_w_per_cpu + (model.busy_w_per_cpu - model.idle_w_per_cpu) * utilization)
        return PowerReading(time.monotonic_ns(), power_w * 1000)
