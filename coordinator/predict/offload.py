"""llama.cpp on a GPU that cannot hold the whole model: the most layers that fit, and the decode speed that split
predicts.

llama.cpp offloads the last `n_gpu_layers` repeating layers (weights and their KV cache) and, when every layer
is offloaded, the output head; the token embeddings stay on the host. Per token, decode reads each layer's bytes
where the layer lives, so seconds/token = GPU bytes / GPU bandwidth + host bytes / host bandwidth. Both
bandwidths are the device's probes at the default efficiency (coordinator/predict/scaling.py), so the speed is an
estimate, and says so. The GPU also holds a compute buffer and the CUDA context (estimated below when no run
measured it).
"""

import dataclasses

from fleetfit.coordinator.predict import scaling
from fleetfit.models.catalogue import Architecture, tensors
from fleetfit.models.quant_sizes import tensor_bytes, tensor_type
from fleetfit.v1 import fleetfit_pb2 as pb

CUDA_CONTEXT_BYTES = 512 << 20  # CUDA context + cuBLAS workspace, typical of a current driver (NVML per process)
HOST_ONLY = ("token_embd.weight", "position_embd.weight")


@dataclasses.dataclass(frozen=True)
class Offload:
    gpu_layers: int  # as llama.cpp counts them: n_layers + 1 = every layer and the output head
    gpu_bytes: float  # GPU memory that split needs
    decode_tps: float | None  # estimated; None without both bandwidth probes
    method: str


def _split_bytes(arch: Architecture, quant: str) -> tuple[float, float, float]:
    """(bytes of one repeating layer, of the output head, of what stays on the host) for llama.cpp GGUF types."""
    layers = head = host = 0.0
    for spec in tensors(arch):
        size = tensor_bytes(spec.shape, tensor_type(arch, quant, spec))
        if spec.name.startswith("blk."):
            layers += size
        elif spec.name in HOST_ONLY:
            host += size
            if arch.tied_embeddings and spec.name == "token_embd.weight":
                head += size  # llama.cpp duplicates a tied table into the output layer's buffer
        else:
            head += size
    return layers / arch.n_layers, head, host


def _bandwidth(device: pb.DeviceInventory, gpu: bool) -> float | None:
    found = [b.gb_per_s for b in device.probes.bandwidth
             if b.HasField("gb_per_s") and (b.target != "cpu") == gpu]
    return max(found) * 1e9 * scaling.DEFAULT_BANDWIDTH_EFFICIENCY if found else None


def largest(device: pb.DeviceInventory, gpu_total_bytes: int, arch: Architecture, quant: str, context: int,
            budget_fraction: float) -> Offload:
    """The most layers whose weights, KV cache, compute buffer and CUDA context stay under budget_fraction of the
    GPU's memory, and the decode speed estimated for that split (0 layers when not even one fits)."""
    layer, head, _ = _split_bytes(arch, quant)
    kv_layer = scaling.kv_cache_bytes(arch, context) / arch.n_layers
    fixed = scaling.compute_buffer_bytes(arch, context) + CUDA_CONTEXT_BYTES
    budget = gpu_total_bytes * budget_fraction
    n = arch.n_layers
    if fixed + n * (layer + kv_layer) + head <= budget:
        layers, gpu_bytes = n + 1, fixed + n * (layer + kv_layer) + head
    else:
        layers = max(0, min(n, int((budget - fixed) // (layer + kv_layer))))
        gpu_bytes = fixed + layers * (layer + kv_layer) if layers else 0.0
    gpu_bw, host_bw = _bandwidth(device, gpu=True), _bandwidth(device, gpu=False)
    on_gpu = min(layers, n)
    gpu_read = on_gpu * (layer + kv_layer) + (head if layers > n else 0)
    host_read = (n - on_gpu) * (layer + kv_layer) + (0 if layers > n else head)
    method = (f"llama.cpp split: {on_gpu} of {n} layers" + (" and the output head" if layers > n else "")
              + f" on the GPU; decode = GPU bytes / GPU bandwidth + host bytes / host bandwidth, each "
              f"{scaling.DEFAULT_BANDWIDTH_EFFICIENCY:.0%} of its probe; CUDA context estimated "
              f"{CUDA_CONTEXT_BYTES >> 20} MiB")
    if gpu_bw is None or (host_read and host_bw is None):
        return Offload(layers, gpu_bytes, None, method + "; no bandwidth probe for the GPU and the host, so no speed")
    seconds = gpu_read / gpu_bw + (host_read / host_bw if host_read else 0.0)
    return Offload(layers, gpu_bytes, 1 / seconds, method)
