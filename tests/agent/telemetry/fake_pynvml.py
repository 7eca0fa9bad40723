"""The power calls of `pynvml`, added to the inventory fake: same names, units and error values."""

from tests.agent.fake_nvml import FakeNvml, NVMLError

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_GPU_IS_LOST = 15


class FakePowerNvml(FakeNvml):
    """`energy_mj` and `power_mw` are per GPU and tests move them; `lost` GPUs fail every query."""

    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST

    def __init__(self, gpus: int = 1, energy_counter: bool = True, power_usage: bool = True, driver_loaded: bool = True):
        super().__init__(gpus=gpus, driver_loaded=driver_loaded)
        self.energy_counter, self.power_usage = energy_counter, power_usage
        self.energy_mj = [9_876_543] * gpus  # since the driver loaded
        self.power_mw = [71_250] * gpus
        self.lost: set[int] = set()

    def _query(self, handle, supported: bool) -> int:
        index = handle[1]
        if index in self.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if not supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:
        """mJ since the driver loaded (Volta and later)."""
        return self.energy_mj[self._query(handle, self.energy_counter)]

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        """mW."""
        return self.power_mw[self._query(handle, self.power_usage)]
