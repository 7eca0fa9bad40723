"""The PyTorch backend: agreement with llama.cpp on the real SmolLM2, weight-only quantization, shapes from
the catalogue, and the agent's harness (precision checks, out of memory, a full profile) around it."""

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.isolation import run_worker
from fleetfit.models import catalogue
from fleetfit.v1 import fleetfit_pb2 as pb

torch = pytest.importorskip("torch")
from fleetfit.agent.backends import torch_model as tm  # noqa: E402  (needs torch)

PROMPT = "The capital of France is"


def test_fp32_greedy_decoding_agrees_with_llama_cpp_f16(ladder):
    """32 greedy tokens from the same prompt ids: torch fp32 on the GGUF's weights against llama.cpp on F16."""
    reference = run_worker({"op": "greedy", "model_path": str(ladder["F16"]), "prompt": PROMPT, "n_gen": 32,
                            "threads": 2}, 300)
    ours = run_worker({"backend": "torch", "op": "greedy", "model_path": str(ladder["F16"]),
                       "prompt_tokens": reference["prompt_tokens"], "n_gen": 32, "threads": 2}, 300)
    assert len(reference["prompt_tokens"]) >= 4 and len(ours["tokens"]) == 32
    agree = sum(a == b for a, b in zip(ours["tokens"], reference["tokens"]))
    assert agree >= 30, (agree, ours["tokens"], reference["tokens"])


@pytest.mark.parametrize(("precision", "tolerance"), [("int8", 0.02), ("int4", 0.15)])
def test_weight_only_linear_layers_stay_close_to_float(precision, tolerance):
    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 96, bias=False)  # 576 = SmolLM2's hidden size: int4 groups of 64
    x = torch.randn(3, 576)
    quantized = (tm.Int8Linear if precision == "int8" else tm.Int4Linear)(linear)
    error = (quantized(x) - linear(x)).norm() / linear(x).norm()
    assert error < tolerance
    assert quantized.weight.element_size() * quantized.weight.numel() <= 576 * 96 // (1 if precision == "int8" else 2)


def test_int4_refuses_a_width_no_group_size_divides():
    with pytest.raises(tm.UnsupportedPrecision, match="multiple of 32"):
        tm.Int4Linear(torch.nn.Linear(100, 8))


def test_random_model_has_the_catalogue_shape_and_runs():
    arch = catalogue.architecture("smollm2-135m")
    model = tm.random_model(tm.Config.of(arch), "cpu", torch.bfloat16)
    assert not any(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == catalogue.n_params(arch)
    model.setup_cache(8)
    logits = model(torch.tensor([[1, 2, 3]]), torch.arange(3))
    assert logits.shape == (1, 1, arch.vocab) and torch.isfinite(logits).all()


@torch.no_grad()
def test_a_batch_of_sequences_decodes_each_as_it_does_alone():
    model = tm.random_model(tm.Config.of(catalogue.architecture("smollm2-135m")), "cpu", torch.float32)
    prompts = torch.randint(0, 1000, (3, 5), generator=torch.Generator().manual_seed(1))
    model.setup_cache(8, batch=3)
    together = [model(prompts, torch.arange(5)), model(torch.tensor([[7], [8], [9]]), torch.tensor([5]))]
    model.setup_cache(8)
    alone = [model(prompts[1:2], torch.arange(5)), model(torch.tensor([[8]]), torch.tensor([5]))]
    for batched, single in zip(together, alone):
        assert batched.shape[0] == 3 and torch.allclose(batched[1:2], single, atol=1e-4)
        assert not torch.allclose(batched[0:1], single, atol=1e-2)  # another prompt: other logits


def test_torch_profile_end_to_end_through_the_worker(cache_dir):
    request = profiling.make_request("smollm2-135m", "int8", "torch", n_prompt=16, n_gen=4, repetitions=1,
                                     threads=2, idle_baseline_s=0, parallel=[1, 2])
    result = profiling.profile(request, "dev-torch", cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    assert (result.quant, result.compute_device, result.model_origin) == ("int8", "cpu", "real")
    assert result.decode_tokens_per_s.mean > 0 and result.prefill_tokens_per_s.mean > 0
    # int8 linear layers plus the fp32 embedding table: well under the fp32 model's 4 bytes per weight
    assert result.model_n_params * 1 < result.weight_bytes < result.model_n_params * 3
    assert result.roofline.weight_bytes_per_token < result.weight_bytes
    assert not result.HasField("gpu_memory")
    assert [p.parallel for p in result.serving] == [1, 2] and not any(p.unsupported_reason for p in result.serving)
    for point in result.serving:
        assert point.per_stream_decode_tokens_per_s.mean * point.parallel == pytest.approx(
            point.aggregate_decode_tokens_per_s.mean) and point.peak_memory_bytes.mean > result.weight_bytes


def test_a_precision_the_device_cannot_run_is_a_failed_result_with_the_reason(cache_dir):
    request = profiling.make_request("qwen2.5-0.5b", "fp16", "torch", n_prompt=8, n_gen=2, repetitions=1,
                                     threads=2, idle_baseline_s=0, device="cpu")
    result = profiling.profile(request, "dev-torch", cache_dir)
    assert result.failure == pb.FAILURE_KIND_ERROR
    assert "CUDA only" in result.error and not result.HasField("decode_tokens_per_s")


def test_a_model_too_large_for_memory_is_reported_as_out_of_memory_with_its_size(cache_dir):
    request = profiling.make_request("llama-2-7b", "fp32", "torch", n_prompt=8, n_gen=2, repetitions=1, threads=2,
                                     idle_baseline_s=0, device="cpu")
    result = profiling.profile(request, "dev-torch", cache_dir, memory_limit_bytes=6 * 2**30)
    assert result.failure == pb.FAILURE_KIND_OOM
    assert "does not fit" in result.error and "25.11 GiB" in result.error


@pytest.mark.parametrize(("model", "quant", "device", "fragment"), [
    ("smollm2-135m", "Q4_0", "", "torch does not take precision 'Q4_0'"),
    ("distilgpt2", "fp32", "", "torch runs llama/qwen2 shapes; distilgpt2 is gpt2"),
    ("smollm2-135m", "fp32", "tpu", "device 'tpu' must be one of '', auto, cpu, cuda"),  # torch's BackendSpec
])
def test_bad_torch_requests_are_refused_before_any_work(cache_dir, model, quant, device, fragment):
    request = profiling.make_request(model, quant, "torch", device=device)
    with pytest.raises(profiling.ProfileInputError, match=fragment):
        profiling.profile(request, "dev-torch", cache_dir)


def test_capabilities_say_which_precision_runs_on_which_device():
    from fleetfit.agent import inventory

    backends = inventory.probe_backends()
    inventory.add_capabilities(backends)
    torch_info = next(b for b in backends if b.name == "torch")
    cpu = {c.precision: c for c in torch_info.capabilities if c.device == "cpu"}
    assert set(cpu) == set(tm.PRECISIONS)
    assert cpu["fp32"].supported and cpu["int8"].supported and cpu["int4"].supported
    assert not cpu["fp16"].supported and "CUDA only" in cpu["fp16"].reason
