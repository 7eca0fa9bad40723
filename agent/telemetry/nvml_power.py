"""NVIDIA GPU power through NVML (nvidia-ml-py): the total-energy counter where the GPU has one
(Volta and later), else instantaneous power polled and integrated by the sampler.

`nvmlDeviceGetPowerUsage` is a 1 s average on most Ampere-and-later boards, so the counter is
preferred. The pynvml module is passed in at the boundary; by default agent.nvml.load_nvml() loads it.
"""

import time

from fleetfit.agent.nvml import NOT_INSTALLED, load_nvml
from fleetfit.agent.telemetry.source import Declined, Discovery, EnergyReading, PowerReading, PowerSource, SampleSkipped

METHOD_ENERGY = "nvml_energy_counter"
METHOD_POWER = "nvml_power_usage"
NVML_ERROR_NOT_SUPPORTED = 3  # the value of pynvml.NVML_ERROR_NOT_SUPPORTED


class _NvmlSource(PowerSource):
    """Holds one nvmlInit reference (NVML counts them) until close()."""

    def __init__(self, nvml, index: int, handle):
        nvml.nvmlInit()
        self.nvml, self.handle = nvml, handle
        self.scope = f"gpu:{index}"
        self.name = f"nvml {self.scope}"

    def close(self) -> None:
        self.nvml.nvmlShutdown()

    def _query(self, nvml_function) -> int:
        try:
            return nvml_function(self.handle)
        except self.nvml.NVMLError as exc:
            raise SampleSkipped(f"{self.name}: NVML error {exc.value}") from exc


class NvmlEnergySource(_NvmlSource):
    method = METHOD_ENERGY
    max_rate_hz = 100.0  # the counter ticks about every 10 ms
    counter_range_uj = None  # 64-bit mJ since driver load: never wraps in practice

    def read(self) -> EnergyReading:
        energy_mj = self._query(self.nvml.nvmlDeviceGetTotalEnergyConsumption)
        return EnergyReading(time.monotonic_ns(), int(energy_mj) * 1000)


class NvmlPowerSource(_NvmlSource):
    method = METHOD_POWER
    max_rate_hz = 50.0

    def read(self) -> PowerReading:
        power_mw = self._query(self.nvml.nvmlDeviceGetPowerUsage)
        return PowerReading(time.monotonic_ns(), float(power_mw))


def _gpu_source(nvml, index: int) -> PowerSource | Declined:
    """The best source this GPU supports, or why it has none."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    errors = []
    for source_class, query in (
        (NvmlEnergySource, nvml.nvmlDeviceGetTotalEnergyConsumption),
        (NvmlPowerSource, nvml.nvmlDeviceGetPowerUsage),
    ):
        try:
            query(handle)
        except nvml.NVMLError as exc:
            errors.append("NOT_SUPPORTED" if exc.value == NVML_ERROR_NOT_SUPPORTED else f"error {exc.value} ({exc})")
            continue
        return source_class(nvml, index, handle)
    return Declined(
        METHOD_POWER,
        f"gpu:{index}: NVML energy counter {errors[0]}, power {errors[1]} (a Jetson, vGPU or pre-Volta GPU?)",
    )


def discover_nvml(nvml=None) -> Discovery:
    nvml = nvml or load_nvml()
    if nvml is None:
        return Discovery(declined=[Declined(METHOD_ENERGY, NOT_INSTALLED)])
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return Discovery(declined=[Declined(METHOD_ENERGY, f"NVML unavailable: {exc}")])
    found = Discovery()
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            found.add(_gpu_source(nvml, index))
    except nvml.NVMLError as exc:
        found.declined.append(Declined(METHOD_ENERGY, f"NVML query failed: {exc}"))
    finally:
        nvml.nvmlShutdown()  # each source holds its own reference
    if not found.sources and not found.declined:
        found.declined.append(Declined(METHOD_ENERGY, "NVML found no GPU"))
    return found
