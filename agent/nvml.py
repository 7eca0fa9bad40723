"""NVIDIA GPUs through NVML (nvidia-ml-py). The only module that imports pynvml.

`list_gpus(nvml=None)` takes the module at the boundary so tests can pass a fake with NVML's interface.
"""

from fleetfit.v1 import fleetfit_pb2 as pb


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


NOT_INSTALLED = "NVML not installed (pip install 'fleetfit[nvml]')"


def load_nvml():
    """The pynvml module, or None when nvidia-ml-py is not installed. The one place pynvml is imported."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def list_gpus(nvml=None) -> tuple[list[pb.GpuInfo], str]:
    """The GPUs NVML sees, and a note saying why the list is empty when it is."""
    nvml = nvml or load_nvml()
    if nvml is None:
        return [], NOT_INSTALLED
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return [], f"NVML unavailable: {exc}"
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(pb.GpuInfo(
                index=index,
                name=_text(nvml.nvmlDeviceGetName(handle)),
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                driver_version=driver,
            ))
        return gpus, "" if gpus else "NVML found no GPU"
    except nvml.NVMLError as exc:
        return [], f"NVML query failed: {exc}"
    finally:
        nvml.nvmlShutdown()


def process_used_bytes(index: int, pid: int, nvml=None) -> tuple[int | None, str]:
    """GPU memory NVML attributes to process `pid` on GPU `index` (CUDA context included), and a note saying
    why it is None when it is. Assumes CUDA and NVML number GPUs alike (CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    nvml = nvml or load_nvml()
    if nvml is None:
        return None, NOT_INSTALLED
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return None, f"NVML unavailable: {exc}"
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory), ""
        return None, "NVML lists no memory for this process (in a container NVML may not see its pid)"
    except nvml.NVMLError as exc:
        return None, f"NVML per-process query failed: {exc}"
    finally:
        nvml.nvmlShutdown()
