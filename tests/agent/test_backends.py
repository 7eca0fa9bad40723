"""The backend registry against the shared vocabulary: one module per backend, probes by import name, capabilities
and obtainable models per backend, precisions spelled canonically, and requests bounded before any work."""

import math
import subprocess
import sys

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.backends import registry
from fleetfit.agent.backends.base import Backend, ProfileInputError
from fleetfit.agent.backends.llama_cpp_backend import LlamaCpp
from fleetfit.models import backends as vocabulary
from fleetfit.models.errors import ModelError


def test_every_vocabulary_backend_is_one_registered_module():
    assert set(registry.MODULES) == set(vocabulary.BACKENDS)
    for name in vocabulary.BACKENDS:
        backend = registry.get(name)
        assert isinstance(backend, Backend) and backend.NAME == name and backend.spec is vocabulary.backend(name)
    assert registry.get("ONNXRuntime").NAME == "onnxruntime"  # spelled as the vocabulary accepts it
    with pytest.raises(ModelError, match="unknown backend 'mlx'"):
        registry.get("mlx")


def test_the_agent_side_of_every_backend_imports_no_runtime(cache_dir):
    code = ("import sys, pathlib; from fleetfit.agent.backends import registry; from fleetfit.agent import profiling; "
            "[(b.probe(), b.models(pathlib.Path(sys.argv[1]))) for b in registry.all_backends()]; "
            "print(sorted(m for m in ('llama_cpp', 'torch', 'onnxruntime', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(cache_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class NotInstalled(LlamaCpp):
    IMPORT_NAME = "fleetfit_no_such_runtime"


def test_a_probe_by_import_name_says_why_it_declined():
    info = NotInstalled().probe()
    assert not info.available and info.reason == "module 'fleetfit_no_such_runtime' is not installed"
    real = registry.get("llama.cpp").probe()  # the distribution is llama-cpp-python, the import name llama_cpp
    assert real.available and real.version == "0.3.36" and not real.reason


def test_llama_cpp_capabilities_come_from_its_build():
    rows = registry.get("llama.cpp").capabilities(120)
    devices = {row.device for row in rows}
    assert devices == {"cpu"}  # this wheel is built without GPU offload
    assert {row.precision for row in rows} >= {"F16", "Q8_0", "Q4_0", "Q4_K_M"} and all(r.supported for r in rows)


def test_onnxruntime_capabilities_are_its_execution_providers():
    pytest.importorskip("onnxruntime")
    rows = registry.get("onnxruntime").capabilities(120)
    assert {(r.device, r.precision) for r in rows} == {("cpu", p) for p in ("fp32", "int8", "int4")}


def test_models_each_backend_can_obtain_here(cache_dir):
    models = {b.NAME: b.models(cache_dir) for b in registry.all_backends()}
    assert {"smollm2-135m", "tinyllama-1.1b", "distilgpt2", "qwen2.5-0.5b"} <= set(models["llama.cpp"])
    assert {"smollm2-135m", "tinyllama-1.1b"} <= set(models["torch"]) and "distilgpt2" not in models["torch"]
    assert models["onnxruntime"] == ["smollm2-135m"]  # real weights only


@pytest.mark.parametrize("backend, given, canonical", [
    ("torch", "BF16", "bf16"), ("torch", "bf16", "bf16"), ("onnxruntime", "INT4", "int4"),
    ("llama.cpp", "q4_0", "Q4_0"), ("llama.cpp", "", None), ("torch", "", "fp32"),
])
def test_precisions_are_spelled_canonically(backend, given, canonical):
    assert profiling.validate(profiling.make_request("smollm2-135m", given, backend))[1] == canonical


def test_a_framework_precision_for_llama_cpp_is_refused_with_the_vocabulary_message():
    with pytest.raises(ProfileInputError) as refused:
        profiling.validate(profiling.make_request("smollm2-135m", "int8", "llama.cpp"))
    with pytest.raises(ModelError) as vocabulary_says:
        vocabulary.backend("llama.cpp").canonical("int8")
    assert str(refused.value) == str(vocabulary_says.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("overrides, message", [
    ({"n_prompt": 65537}, "n-prompt must be at most 65536, got 65537"),
    ({"n_gen": 2**31 - 1}, "n-gen must be at most 65536"),
    ({"repetitions": 101}, "repetitions must be at most 100"),
    ({"threads": 1_000_000}, "threads must be at most 1024"),  # the job bounds' words (models/job_bounds.py)
    ({"threads": -1}, "threads must be at least 0"),
    ({"timeout_s": math.nan}, "timeout must be a finite number"),
    ({"timeout_s": math.inf}, "timeout must be a finite number"),
    ({"timeout_s": -1.0}, "timeout must be at least 0"),
    ({"idle_baseline_s": 1e9}, "idle baseline must be at most 600"),
    ({"idle_baseline_s": math.nan}, "idle baseline must be a finite number"),
    ({"idle_baseline_s": -0.5}, "idle baseline must be at least 0"),
    ({"device": "tpu"}, "device 'tpu' must be one of '', auto, cpu, cuda, metal"),  # llama.cpp's BackendSpec
    ({"device": "cuda:x"}, "device 'cuda:x' must be one of"),
    ({"parallel": [0]}, "parallel values must be 1..256 sequences, got 0"),
    ({"parallel": [257]}, "parallel values must be 1..256 sequences, got 257"),
    ({"parallel": [2, 2]}, "parallel lists 2 more than once"),
    ({"parallel": list(range(1, 30))}, "parallel lists 29 values: at most 16"),
    ({"parallel": [256], "n_prompt": 4096}, "= 1050624 tokens of KV cache: at most 262144"),
])
def test_requests_are_bounded_with_one_line(overrides, message):
    params = dict(n_prompt=16, n_gen=8, repetitions=1) | overrides
    with pytest.raises(ProfileInputError, match=message.replace(".", r"\.")) as refused:
        profiling.validate(profiling.make_request("smollm2-135m", **params))
    assert "\n" not in str(refused.value)


def test_inventory_lists_each_backends_models(cache_dir):
    from fleetfit.agent import inventory

    backends = {b.name: b for b in inventory.collect("dev-1", cache_dir=cache_dir).backends}
    assert "tinyllama-1.1b" in backends["llama.cpp"].models and "smollm2-135m" in backends["onnxruntime"].models
    assert not inventory.collect("dev-1").backends[0].models  # without a cache directory: not looked for
