"""Fit on a GPU device whose llama.cpp build offloads: the most layers that fit the GPU, and their speed."""

import pytest

from fleetfit.coordinator.predict import offload, scaling
from fleetfit.coordinator.answers.fit import TIGHT, fit
from fleetfit.models.catalogue import architecture
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE

GIB = 2**30


def gpu_device(device_id: str, gpu_gib: float, cuda_build: bool = True) -> pb.Device:
    llama = pb.BackendInfo(name="llama.cpp", available=True, capabilities=[
        pb.BackendCapability(device="cpu", precision="Q4_0", supported=True),
        pb.BackendCapability(device="cuda", precision="Q4_0", supported=cuda_build,
                             reason="" if cuda_build else "this llama.cpp build is CPU-only")])
    probes = pb.DeviceProbes(bandwidth=[pb.BandwidthProbe(target="cpu", gb_per_s=50.0),
                                        pb.BandwidthProbe(target="gpu:0", gb_per_s=1000.0)])
    return pb.Device(inventory=pb.DeviceInventory(
        device_id=device_id, hostname="gpu-box", ram_total_bytes=256 * GIB, backends=[llama], probes=probes,
        gpus=[pb.GpuInfo(index=0, name="NVIDIA L4", memory_total_bytes=int(gpu_gib * GIB))]))


def test_a_model_too_big_for_the_gpu_gets_the_most_layers_that_fit():
    device = gpu_device("d1", 8)
    arch = architecture("llama-2-13b")
    split = offload.largest(device.inventory, 8 * GIB, arch, "Q4_0", 4096, TIGHT)
    assert 0 < split.gpu_layers < arch.n_layers
    one_more = offload.largest(device.inventory, 8 * GIB, arch, "Q4_0", 4096, 1.0)  # a looser budget fits more
    assert one_more.gpu_layers >= split.gpu_layers
    assert split.gpu_bytes <= 8 * GIB * TIGHT
    layer = (split.gpu_bytes - scaling.compute_buffer_bytes(arch, 4096) - offload.CUDA_CONTEXT_BYTES) / split.gpu_layers
    assert split.gpu_bytes + layer > 8 * GIB * TIGHT  # one layer more would not fit
    all_cpu = offload.largest(device.inventory, 0, arch, "Q4_0", 4096, TIGHT)
    whole = offload.largest(device.inventory, 80 * GIB, arch, "Q4_0", 4096, TIGHT)
    assert all_cpu.gpu_layers == 0 and whole.gpu_layers == arch.n_layers + 1
    assert all_cpu.decode_tps < split.decode_tps < whole.decode_tps  # more on the faster memory, faster decode


def test_fit_answers_with_the_offload_and_labels_it_estimated():
    devices = [gpu_device("small-gpu", 8), gpu_device("big-gpu", 80), gpu_device("cpu-build", 8, cuda_build=False)]
    answers = {a.device_id: a for a in fit("llama-2-13b", "Q4_0", "llama.cpp", devices, [])}
    small, big = answers["small-gpu"], answers["big-gpu"]
    assert 0 < small.gpu_layers < 40 and f"--gpu-layers {small.gpu_layers}" in small.reason
    assert PROVENANCE.word(small.gpu_memory_bytes.provenance_kind) == PROVENANCE.word(small.offload_decode_tokens_per_s.provenance_kind) == "estimated"
    assert big.gpu_layers == 41 and "the whole model fits" in big.reason
    assert big.offload_decode_tokens_per_s.value > small.offload_decode_tokens_per_s.value
    assert not answers["cpu-build"].HasField("gpu_layers")  # a CPU-only build: no offload to answer with


def test_no_speed_without_probes():
    device = gpu_device("d1", 8).inventory
    del device.probes.bandwidth[:]
    split = offload.largest(device, 8 * GIB, architecture("llama-2-13b"), "Q4_0", 4096, TIGHT)
    assert split.gpu_layers > 0 and split.decode_tps is None and "no bandwidth probe" in split.method


@pytest.mark.parametrize("name", ["smollm2-135m", "tinyllama-1.1b"])
def test_tied_and_untied_heads_are_counted(name):
    arch = architecture(name)
    layer, head, host = offload._split_bytes(arch, "Q8_0")
    assert layer > 0 and head > 0 and host > 0
    total = scaling.weight_bytes(arch, "Q8_0")
    duplicated = host if arch.tied_embeddings else 0  # a tied table is copied into the output buffer
    assert layer * arch.n_layers + head + host == pytest.approx(total + duplicated)
