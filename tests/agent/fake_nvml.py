"""A stand-in for the `pynvml` module (nvidia-ml-py) at the hardware boundary this machine lacks.

It has the same names, signatures, return types and error class as nvidia-ml-py 12/13 for the calls the
agent makes; values are an H100 80GB HBM3's as NVML reports them.
"""


class NVMLError(Exception):
    def __init__(self, value: int):
        self.value = value

    def __str__(self) -> str:
        return {2: "Invalid Argument", 9: "Driver Not Loaded", 12: "Library Not Found"}.get(self.value, "Unknown Error")


NVML_ERROR_DRIVER_NOT_LOADED = 9


class c_nvmlMemory_t:
    def __init__(self, total: int, free: int, used: int):
        self.total, self.free, self.used = total, free, used


class c_nvmlProcessInfo_t:
    """pynvml's per-process record; usedGpuMemory is None where NVML reports NVML_VALUE_NOT_AVAILABLE."""

    def __init__(self, pid: int, usedGpuMemory: int | None):
        self.pid, self.usedGpuMemory, self.gpuInstanceId, self.computeInstanceId = pid, usedGpuMemory, 0xFFFFFFFF, 0xFFFFFFFF


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, gpus: int = 1, driver_loaded: bool = True):
        self.gpus, self.driver_loaded, self.initialised = gpus, driver_loaded, 0
        self.processes: dict[int, list[c_nvmlProcessInfo_t]] = {}  # per GPU index; tests fill it

    def nvmlInit(self):
        if not self.driver_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised += 1

    def nvmlShutdown(self):
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int):
        if not 0 <= index < self.gpus:
            raise NVMLError(2)
        return ("handle", index)

    def nvmlDeviceGetName(self, handle) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle) -> str:
        return f"GPU-5b0c8f2e-1d3a-4c6b-9e7f-00000000000{handle[1]}"

    def nvmlDeviceGetMemoryInfo(self, handle) -> c_nvmlMemory_t:
        return c_nvmlMemory_t(total=85520809984, free=84929347584, used=591462400)

    def nvmlDeviceGetComputeRunningProcesses(self, handle) -> list[c_nvmlProcessInfo_t]:
        return list(self.processes.get(handle[1], []))
