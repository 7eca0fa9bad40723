"""The model cache: catalogue shapes synthesized for llama.cpp, and files made safely by processes racing on one
cache (real fleetfit-agent processes, real llama.cpp)."""

import json
import os
import subprocess

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.backends.base import ProfileInputError
from fleetfit.models import catalogue, real_models
from fleetfit.models.gguf_file import inspect_gguf
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, run_cli


def short(model: str, quant: str | None = None, **overrides) -> pb.ProfileRequest:
    params = dict(n_prompt=16, n_gen=8, repetitions=1, threads=2, idle_baseline_s=0) | overrides
    return profiling.make_request(model, quant, **params)


def test_llama_cpp_runs_a_catalogue_shape_synthesized_into_the_cache(cache_dir):
    result = profiling.profile(short("distilgpt2", "q4_0"), "dev-1", cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    path = cache_dir / "synthetic" / "distilgpt2-Q4_0.gguf"
    assert (result.model_name, result.quant, result.model_origin) == ("distilgpt2", "Q4_0", "synthetic")
    assert result.model_file == str(path) and result.model_arch == "gpt2"
    assert result.model_n_params == catalogue.n_params(catalogue.architecture("distilgpt2"))
    assert result.decode_tokens_per_s.mean > 0 and result.roofline.n_layers == 6
    made = path.stat()
    again = profiling.profile(short("distilgpt2", "Q4_0"), "dev-1", cache_dir)
    assert not again.failure and (path.stat().st_ino, path.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    listed = run_cli("fleetfit-agent", "models", "list", "--cache-dir", str(cache_dir))
    assert any(line.split()[:2] == ["distilgpt2", "Q4_0"] for line in listed.stdout.splitlines()), listed.stdout


def test_a_catalogue_shape_needs_a_gguf_type_on_llama_cpp(cache_dir):
    with pytest.raises(ProfileInputError, match="distilgpt2 is a catalogue shape: name a GGUF type"):
        profiling.profile(short("distilgpt2"), "dev-1", cache_dir)


def test_a_synthesis_cut_by_the_deadline_leaves_no_partial_file(cache_dir):
    result = profiling.profile(short("llama-2-7b", "Q4_0", timeout_s=3), "dev-1", cache_dir)
    assert result.failure == pb.FAILURE_KIND_TIMEOUT
    assert "synthesis of llama-2-7b Q4_0" in result.error and "killed" in result.error
    assert not [p.name for p in (cache_dir / "synthetic").iterdir() if "llama-2-7b" in p.name and
                not p.name.endswith(".lock")]


def race(*args: str, n: int = 2) -> list[subprocess.CompletedProcess]:
    """The same fleetfit-agent command in `n` processes started together."""
    procs = [subprocess.Popen([str(BIN / "fleetfit-agent"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".part")]


def test_two_processes_deriving_the_same_file_both_get_it(tmp_path, ladder):
    shared = tmp_path / "cache"
    base = real_models.model_file(shared, "smollm2-135m", "Q4_1")
    base.parent.mkdir(parents=True)
    os.link(ladder["Q4_1"], base)  # the shipped file, already pulled
    procs = race("models", "quantize", "smollm2-135m", "--to", "Q8_0", "--threads", "1", "--cache-dir", str(shared))
    assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
    target = real_models.model_file(shared, "smollm2-135m", "Q8_0")
    assert {p.stdout.strip() for p in procs} == {str(target)}
    assert inspect_gguf(target).quant == "Q8_0" and leftovers(shared) == []


def test_two_processes_synthesizing_the_same_shape_both_get_it(tmp_path):
    shared = tmp_path / "cache"
    procs = race("models", "synth", "distilgpt2", "--quant", "Q8_0", "--cache-dir", str(shared))
    assert [p.returncode for p in procs] == [0, 0], [p.stderr for p in procs]
    target = shared / "synthetic" / "distilgpt2-Q8_0.gguf"
    assert {p.stdout.strip() for p in procs} == {str(target)}
    assert inspect_gguf(target).n_params == catalogue.n_params(catalogue.architecture("distilgpt2"))
    assert leftovers(shared) == []


def test_models_list_passes_over_what_is_not_a_regular_file(tmp_path):
    from tests.conftest import run_cli

    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "smollm2-135m-Q4_0.gguf").symlink_to(tmp_path / "gone.gguf")  # a broken link
    (folder / "smollm2-135m-F16.gguf").symlink_to(folder / "smollm2-135m-F16.gguf")  # a loop
    (folder / "smollm2-135m-Q8_0.gguf").write_bytes(b"GGUF")
    listed = run_cli("fleetfit-agent", "models", "list", "--json", "--cache-dir", str(tmp_path))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert [row["quant"] for row in json.loads(listed.stdout)] == ["Q8_0"]
