"""What a stored run is, read the same way by the predictions and the answers: its backend, precision, run shape
and the memory figure it needs (moved from answers/limits.py so predict/ reads runs without importing answers/)."""

from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.v1 import fleetfit_pb2 as pb

def backend_of(r: pb.ProfileResult) -> str:
    return r.request.backend or DEFAULT_BACKEND


def quant_of(r: pb.ProfileResult) -> str:
    return r.quant or r.request.quant


def run_shape(r: pb.ProfileResult) -> str:
    """The run's shape, e.g. "pp512/tg128 ctx640 t2 b2048/512 cpu", or "... cuda ngl16" for a partial offload."""
    n_prompt, n_gen = r.n_prompt or r.request.n_prompt, r.n_gen or r.request.n_gen
    text = f"pp{n_prompt}/tg{n_gen}"
    if r.n_ctx:
        text += f" ctx{r.n_ctx}"
    text += f" t{r.threads or r.request.threads}"
    if r.n_batch:
        text += f" b{r.n_batch}/{r.n_ubatch}"
    text += f" {r.compute_device or 'cpu'}"
    if r.HasField("gpu_layers") and r.gpu_layers and r.compute_device not in ("", "cpu"):
        text += f" ngl{r.gpu_layers}"  # llama.cpp's layers on the GPU: a partial offload is another shape
    return text


def memory_figure(r: pb.ProfileResult) -> tuple[int | None, str]:
    """What the run needs in memory, and which figure that is: on a GPU the GPU memory (torch reserved peak plus
    the CUDA context, else NVML's per-process figure), elsewhere the worker's peak RSS."""
    gpu = r.gpu_memory if r.HasField("gpu_memory") else None
    if gpu is not None and gpu.HasField("fit_bytes"):
        if backend_of(r) != "llama.cpp":
            return gpu.fit_bytes, "GPU: torch reserved peak + CUDA context"
        if gpu.HasField("nvml_process_used_bytes"):
            return gpu.fit_bytes, "GPU: NVML per-process used (llama.cpp buffers + CUDA context)"
        return gpu.fit_bytes, "GPU: llama.cpp's own buffers (CUDA context not included)"
    if gpu is not None and gpu.HasField("nvml_process_used_bytes"):
        return gpu.nvml_process_used_bytes, "GPU: NVML per-process used"
    if r.HasField("peak_rss_bytes"):
        return r.peak_rss_bytes, "host: peak RSS of the worker"
    return None, "no memory figure"
