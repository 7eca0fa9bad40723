"""The model cache: catalogue shapes synthesized for llama.cpp, and files made safely by processes racing on one
cache (real fleetfit-agent processes, real llama.cpp)."""

import json
import os
import pathlib
import subprocess
import time

import pytest

from fleetfit.agent import model_cache, profiling
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


# An agent SIGKILLed while its worker writes into the cache or runs a job: the worker dies with it, and the next
# writer of the same file (holding its lock) removes the dead one's partial file and makes the file.

AGENT_OPS = {  # what the killed agent runs; `src` is an F16 GGUF, `cache` the cache
    "derive": "model_cache.derive(src, 'Q4_0', cache / 'models' / 'm' / 'm-Q4_0.gguf', threads=1)",
    "synthesize": "model_cache.synthesize('smollm2-135m', 'F16', cache)",
    "profile": ("from fleetfit.agent.isolation import run_worker\n"
                "from tests.agent.test_isolation import profile_op\n"
                "run_worker(profile_op(src, n_prompt=512, n_gen=128, repetitions=100), 600)"),
}


@pytest.fixture(scope="module")
def f16_source(tmp_path_factory):
    from fleetfit.models import synth

    path = tmp_path_factory.mktemp("src") / "src.gguf"
    synth.write_synthetic("smollm2-135m", "F16", path, force=True)
    return path


@pytest.mark.parametrize("op", list(AGENT_OPS))
def test_an_agent_killed_mid_write_takes_its_worker_along_and_its_partial_file_is_replaced(tmp_path, f16_source, op):
    import signal

    import psutil

    from tests.conftest import wait_until

    cache = tmp_path / "cache"
    code = ("import pathlib, sys\nfrom fleetfit.agent import model_cache\n"
            f"src, cache = pathlib.Path({str(f16_source)!r}), pathlib.Path({str(cache)!r})\n" + AGENT_OPS[op])
    agent = psutil.Popen([str(BIN / "python"), "-c", code], cwd=pathlib.Path(__file__).parents[2])
    worker = None
    try:
        worker = wait_until(lambda: next((p for p in agent.children() if "fleetfit.agent.worker" in p.cmdline()),
                                         None), 60, "the worker")
        if op != "profile":  # killed while the partial file is being written
            wait_until(lambda: leftovers(tmp_path), 60, "a partial file")
        else:
            time.sleep(1.0)  # loading the model
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        gone, alive = psutil.wait_procs([worker], timeout=5)
        assert not alive, f"the worker of the killed agent is still running ({op})"
    finally:
        for proc in (agent, worker):  # whatever the outcome, nothing of this test keeps running
            if proc is not None and proc.is_running():
                proc.kill()
    if op == "profile":
        return
    dead = leftovers(tmp_path)
    assert dead  # what the killed writer left
    if op == "derive":
        made = model_cache.derive(f16_source, "Q4_0", cache / "models" / "m" / "m-Q4_0.gguf", threads=1)
    else:
        made = model_cache.synthesize("smollm2-135m", "F16", cache)
    assert inspect_gguf(made).quant == ("Q4_0" if op == "derive" else "F16")
    assert leftovers(tmp_path) == [], "the dead writer's partial file is still there"
