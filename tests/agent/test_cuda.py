"""Real NVIDIA hardware: NVML inventory and power, and a full torch profile on CUDA through the agent.

Skipped, with the reason, where there is no NVIDIA GPU (CI machines). On a GPU machine:
`python -m pytest tests/agent/test_cuda.py`.
"""

import time

import pytest

from fleetfit.agent import nvml, profiling
from fleetfit.agent.telemetry.nvml_power import discover_nvml
from fleetfit.agent.telemetry.source import EnergyReading
from fleetfit.models import catalogue
from fleetfit.v1.words import PROVENANCE

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or nvml.load_nvml() is None,
                                reason="needs an NVIDIA GPU, a CUDA build of torch and nvidia-ml-py")

PLAUSIBLE_GPU_WATTS = (10.0, 1500.0)


def test_nvml_inventory_agrees_with_cuda():
    gpus, note = nvml.list_gpus()
    assert gpus, note
    props = torch.cuda.get_device_properties(0)
    assert gpus[0].name == props.name
    # NVML counts all of the board's memory; CUDA the part it can address: within a few percent.
    assert abs(gpus[0].memory_total_bytes - props.total_memory) / gpus[0].memory_total_bytes < 0.05
    assert gpus[0].driver_version and gpus[0].uuid.startswith("GPU-")


def test_nvml_power_source_reads_a_plausible_draw_under_load():
    found = discover_nvml()
    assert found.sources, found.declined
    source = found.sources[0]
    try:
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
        first = source.read()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        second = source.read()
    finally:
        source.close()
    seconds = (second.monotonic_ns - first.monotonic_ns) / 1e9
    if isinstance(first, EnergyReading):
        watts = (second.energy_uj - first.energy_uj) / 1e6 / seconds
    else:
        watts = second.power_mw / 1000
    assert PLAUSIBLE_GPU_WATTS[0] < watts < PLAUSIBLE_GPU_WATTS[1], (source.name, watts)


def test_torch_profile_on_cuda_measures_gpu_memory_and_nvml_energy(tmp_path):
    # A catalogue shape with random weights made on the GPU: GPU machines may not reach the package registry.
    request = profiling.make_request("smollm2-360m", "fp16", "torch", n_prompt=32, n_gen=16, repetitions=2,
                                     idle_baseline_s=0.5, device="cuda")
    result = profiling.profile(request, "gpu-test", tmp_path)
    assert not result.failure, result.error
    assert result.decode_tokens_per_s.mean > 10
    weights = catalogue.n_params(catalogue.architecture("smollm2-360m")) * 2
    gpu = result.gpu_memory
    assert gpu.device_name == torch.cuda.get_device_name(0)
    assert weights <= gpu.torch_allocated_peak_bytes <= gpu.torch_reserved_peak_bytes
    if gpu.HasField("nvml_process_used_bytes"):  # absent where NVML cannot see the pid (some containers)
        assert gpu.nvml_process_used_bytes >= gpu.torch_reserved_peak_bytes
    else:
        assert gpu.note
    decode = [p for p in result.power.phases if p.phase == "decode" and p.method.startswith("nvml")]
    assert decode and decode[0].scope == "gpu:0", [(p.phase, p.source) for p in result.power.phases]
    assert PROVENANCE.word(decode[0].provenance_kind) == "measured"
    assert PLAUSIBLE_GPU_WATTS[0] < decode[0].average_power_w < PLAUSIBLE_GPU_WATTS[1]
    assert "decode: CUDA graph" in result.backend_build  # captured, not eager


def test_captured_decode_gives_the_eager_logits():
    from fleetfit.agent.backends import torch_model as tm
    from fleetfit.agent.backends import torch_runtime

    model = tm.random_model(tm.Config.of(catalogue.architecture("smollm2-135m")), "cuda", torch.float16)
    model.setup_cache(64)
    with torch.no_grad():
        prompt = torch.randint(0, model.c.vocab, (1, 8), device="cuda")
        model(prompt, torch.arange(8, device="cuda"))
        token, pos = torch.tensor([[5]], device="cuda"), torch.tensor([8], device="cuda")
        eager = model(token, pos).clone()
        step, how = torch_runtime.decode_step(model, "cuda")
        assert how.startswith("CUDA graph"), how
        model.clear_cache()
        model(prompt, torch.arange(8, device="cuda"))
        captured = step(token, pos)
    assert torch.allclose(captured, eager, atol=1e-2, rtol=1e-2)


def test_llama_cpp_offload_reports_gpu_layers_and_gpu_memory(tmp_path):
    from fleetfit.agent.isolation import run_worker
    from fleetfit.models.synth import write_synthetic

    if "cuda" not in {c["device"] for c in run_worker({"backend": "llama.cpp", "op": "capabilities"}, 120)
                      ["capabilities"] if c["supported"]}:
        pytest.skip("this llama.cpp build is CPU-only (rerun scripts/install.sh with the CUDA toolkit present)")
    path = write_synthetic("smollm2-135m", "Q8_0", tmp_path / "s-Q8_0.gguf")
    whole = profiling.profile(profiling.make_request(str(path), n_prompt=32, n_gen=8, repetitions=1,
                                                     idle_baseline_s=0), "gpu-test", tmp_path)
    half = profiling.profile(profiling.make_request(str(path), n_prompt=32, n_gen=8, repetitions=1,
                                                    idle_baseline_s=0, gpu_layers=15, parallel=[1, 4]),
                             "gpu-test", tmp_path)
    assert not whole.failure and not half.failure, (whole.error, half.error)
    assert whole.gpu_layers == 31 and half.gpu_layers == 15 and whole.compute_device == "cuda"
    assert 0 < half.gpu_memory.backend_buffer_bytes < whole.gpu_memory.backend_buffer_bytes
    assert whole.gpu_memory.fit_bytes >= whole.gpu_memory.backend_buffer_bytes
    one, four = half.serving  # each sweep point's own KV cache on the GPU: more for 4 sequences than for 1
    assert 0 < one.gpu_memory.backend_buffer_bytes < four.gpu_memory.backend_buffer_bytes
