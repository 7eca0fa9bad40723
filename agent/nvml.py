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
