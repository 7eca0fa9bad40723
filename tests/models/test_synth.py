import errno

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from fleetfit.agent.backends.base import Measured, RunTarget, WorkerJob
from fleetfit.agent.isolation import run_worker
from fleetfit.agent.profiling import make_request
from fleetfit.models import synth
from fleetfit.models.catalogue import Architecture, architecture, n_params
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf
from fleetfit.models.quant_sizes import FILE_TYPES

# A test-only shape: 256-wide rows so every K-quant block fits, 512 tokens for the placeholder vocabulary.
TINY = Architecture(name="tiny-test", family="llama", n_layers=2, hidden=256, n_heads=4, n_kv_heads=2, ffn=512,
                    vocab=512, context_length=256, tied_embeddings=False, rope_theta=10000.0, norm_eps=1e-5,
                    source="test")
# Qwen2's attention biases and tied embeddings, with 320-wide rows that send Q4_K_M through llama.cpp's fallbacks.
TINY_QWEN2 = Architecture(name="tiny-qwen2", family="qwen2", n_layers=2, hidden=320, n_heads=5, n_kv_heads=1, ffn=640,
                          vocab=512, context_length=256, tied_embeddings=True, rope_theta=1e6, norm_eps=1e-6,
                          source="test")
PLENTY = 1 << 50  # disk and RAM figures that never refuse


def tiny(name, family, **change):
    """A family's tensor set at a test size: 256-wide rows, 2 layers, a 512-token vocabulary."""
    shape = dict(n_layers=2, hidden=256, n_heads=4, n_kv_heads=2, ffn=512, vocab=512, context_length=256,
                 tied_embeddings=False, rope_theta=10000.0, norm_eps=1e-6, source="test")
    return Architecture(name=name, family=family, **{**shape, **change})


# Each family we catalogue, shrunk, with the features that set it apart, and a type that exercises its mix.
TINY_FAMILIES = [
    (tiny("tiny-nemo", "llama", explicit_head_dim=128), "Q4_K_M"),  # head_dim x heads != hidden (Mistral-Nemo)
    (tiny("tiny-qwen3", "qwen3", explicit_head_dim=128, tied_embeddings=True), "Q3_K_M"),
    (tiny("tiny-gemma3", "gemma3", n_layers=6, n_heads=2, n_kv_heads=1, explicit_head_dim=128, tied_embeddings=True,
          sliding_window=32, sliding_pattern=6), "IQ4_XS"),
    (tiny("tiny-phi", "phi3", rotary_fraction=0.75, tied_embeddings=True), "Q2_K"),
    (tiny("tiny-qwen3moe", "qwen3moe", explicit_head_dim=64, ffn=256, n_experts=8, n_experts_used=2), "Q4_K_M"),
    (tiny("tiny-gpt-oss", "gpt-oss", explicit_head_dim=64, ffn=256, n_experts=4, n_experts_used=2,
          sliding_window=32, sliding_pattern=2), "MXFP4_MOE"),  # MXFP4 experts, attention sinks, biases
]


def write(arch, quant, path, **kw):
    return synth.write_synthetic(arch, quant, path, free_disk_bytes=PLENTY, available_ram_bytes=PLENTY, **kw)


@pytest.mark.parametrize("quant", list(FILE_TYPES))
def test_every_quant_gives_a_parsable_file_of_the_predicted_size(tmp_path, quant):
    path = write(TINY, quant, tmp_path / "tiny.gguf")
    info = inspect_gguf(path)
    assert (info.architecture, info.quant, info.n_params) == ("llama", quant, n_params(TINY))
    assert info.file_bytes == synth.predict_file_bytes(TINY, quant)


@pytest.mark.parametrize("quant", list(FILE_TYPES))
def test_weights_are_finite_and_small(tmp_path, quant):
    path = write(TINY, quant, tmp_path / "tiny.gguf")
    for tensor in GGUFReader(path).tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        assert np.isfinite(values).all(), tensor.name
        if tensor.name.endswith("norm.weight"):
            assert (values == 1).all()
        else:
            assert 0 < np.abs(values).max() < 0.5, tensor.name


def test_the_seed_decides_the_weights(tmp_path):
    first, again, other = (write(TINY, "Q4_0", tmp_path / f"{i}.gguf", seed=seed) for i, seed in enumerate((1, 1, 2)))
    assert first.read_bytes() == again.read_bytes() != other.read_bytes()


@pytest.mark.parametrize("arch, quant", [
    (architecture("distilgpt2"), "F16"),  # llama.cpp's gpt2 architecture
    (architecture("smollm2-135m"), "Q4_0"),
    (TINY_QWEN2, "Q4_K_M"),
], ids=lambda value: getattr(value, "name", value))
def test_llama_cpp_loads_and_runs_it(tmp_path, arch, quant):
    runs_in_llama_cpp(write(arch, quant, tmp_path / "model.gguf"), arch, quant, 16, 4, 2)


def runs_in_llama_cpp(path, arch, quant, n_prompt, n_gen, threads):
    request = make_request(str(path), n_prompt=n_prompt, n_gen=n_gen, repetitions=1, threads=threads)
    job = WorkerJob(request, RunTarget(name=arch.name, origin="synthetic", precision=quant, path=str(path)), threads,
                    str(path.parent))
    run = Measured.from_json(run_worker({"op": "profile", "job": job.to_json()}, 120)).run
    assert inspect_gguf(path).n_params == n_params(arch)  # llama.cpp loads a file only when its tensors are the shape's
    assert run.decode_tokens_per_s.mean > 0


@pytest.mark.parametrize("arch, quant", TINY_FAMILIES, ids=lambda value: getattr(value, "name", value))
def test_llama_cpp_loads_and_runs_each_family(tmp_path, arch, quant):
    path = write(arch, quant, tmp_path / "model.gguf")
    assert inspect_gguf(path).architecture == arch.family
    runs_in_llama_cpp(path, arch, quant, 8, 2, 1)


def _fail_on_third_tensor(monkeypatch, exc):
    real_write_tensor, calls = synth._write_tensor, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise exc
        real_write_tensor(*args)

    monkeypatch.setattr(synth, "_write_tensor", failing)


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    _fail_on_third_tensor(monkeypatch, KeyboardInterrupt())
    target = tmp_path / "tiny.gguf"
    with pytest.raises(KeyboardInterrupt):
        write(TINY, "Q8_0", target)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_gives_a_one_line_error_and_no_file(tmp_path, monkeypatch):
    _fail_on_third_tensor(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    target = tmp_path / "tiny.gguf"
    with pytest.raises(ModelError, match=r"could not write .*tiny.gguf: No space left on device"):
        write(TINY, "Q8_0", target)
    assert list(tmp_path.iterdir()) == []


def test_refuses_when_the_disk_is_one_byte_short(tmp_path):
    needed = synth.predict_file_bytes(TINY, "Q4_0")
    with pytest.raises(ModelError, match=r"tiny-test Q4_0 needs 0.00 GB of disk, only 0.00 GB is free \(use --force"):
        synth.write_synthetic(TINY, "Q4_0", tmp_path / "a.gguf", free_disk_bytes=needed - 1, available_ram_bytes=PLENTY)
    assert list(tmp_path.iterdir()) == []
    synth.write_synthetic(TINY, "Q4_0", tmp_path / "a.gguf", free_disk_bytes=needed, available_ram_bytes=PLENTY)


def test_refuses_when_ram_is_short_unless_forced(tmp_path):
    plan = synth.plan_file(TINY, "Q4_0")
    assert plan.load_memory_bytes() > plan.weight_bytes
    with pytest.raises(ModelError, match="RAM to load"):
        synth.write_synthetic(TINY, "Q4_0", tmp_path / "a.gguf", free_disk_bytes=PLENTY,
                              available_ram_bytes=plan.load_memory_bytes() - 1)
    synth.write_synthetic(TINY, "Q4_0", tmp_path / "a.gguf", force=True, free_disk_bytes=0, available_ram_bytes=0)
    assert inspect_gguf(tmp_path / "a.gguf").quant == "Q4_0"


def test_a_7b_is_refused_on_a_small_machine_before_anything_is_written(tmp_path):
    with pytest.raises(ModelError, match=r"llama-2-7b F16 needs 13.\d\d GB of disk, only 8.00 GB is free"):
        synth.write_synthetic("llama-2-7b", "F16", tmp_path / "x.gguf", free_disk_bytes=8 * 10**9,
                              available_ram_bytes=24 * 10**9)
    assert list(tmp_path.iterdir()) == []


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ModelError, match="did you mean llama-2-7b"):
        write("llama-2-7", "Q4_0", tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="not supported for synthetic models"):
        write(TINY, "IQ2_XXS", tmp_path / "x.gguf")


LADDER = ("Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ4_XS", "Q2_K")
# 16 layers so that the first eighth and sixteenth of llama.cpp's mixes are whole layers; 8 query heads per 2 KV
# heads (the rules for 4+ per KV head) and 3 per 1 (below it)
DEEP_GQA4 = tiny("deep-gqa4", "llama", n_layers=16, n_heads=8, n_kv_heads=2)
DEEP_GQA3_TIED = tiny("deep-gqa3", "qwen3", n_layers=16, n_heads=3, n_kv_heads=1, explicit_head_dim=64,
                      tied_embeddings=True)


@pytest.mark.parametrize("arch, quant", [*((DEEP_GQA4, q) for q in LADDER), *((DEEP_GQA3_TIED, q) for q in ("Q3_K_M", "IQ4_XS", "Q2_K")),
                                         (TINY_FAMILIES[3][0], "Q4_K_M"), (TINY_FAMILIES[4][0], "Q3_K_M"),
                                         (TINY_FAMILIES[5][0], "MXFP4_MOE")],
                         ids=lambda value: getattr(value, "name", value))
def test_tensor_types_match_llama_cpps_quantizer(tmp_path, arch, quant):
    """llama.cpp's own quantizer, run on an F16 file of the shape, gives every tensor the type we predict, so the
    file is the size we predict."""
    from fleetfit.agent import model_cache

    source = write(arch, "F16", tmp_path / "f16.gguf")
    path = model_cache.derive(source, quant, tmp_path / f"{quant}.gguf", threads=1)
    plan = synth.plan_file(arch, quant)
    assert {t.name: t.tensor_type.name for t in GGUFReader(path).tensors} == {t.name: t.ggml_type for t in plan.tensors}
    assert sum(int(t.n_bytes) for t in GGUFReader(path).tensors) == plan.weight_bytes
