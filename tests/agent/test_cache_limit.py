"""The agent's cache has a size limit: files evicted least recently used, never one in use, the shipped real
model last; `models rm` removes files and refuses one in use; a local run waits for the device's run lock and
leaves the cache within its limit (real fleetfit-agent processes, real llama.cpp)."""

import os
import select
import pathlib
import subprocess
import time

import pytest

from fleetfit.agent import model_cache
from fleetfit.agent.daemon import run_lock_path
from fleetfit.models.errors import ModelError
from tests.conftest import BIN, assert_one_line_error, run_cli

MIB = 2**20


def put(cache: pathlib.Path, relative: str, mib: int, used_s_ago: float) -> pathlib.Path:
    """A cache file of `mib` MiB last used `used_s_ago` seconds ago (the cache's own rules read names, sizes and
    access times only, so plain bytes stand for GGUF files here)."""
    path = cache / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * (mib * MIB))
    os.utime(path, (time.time() - used_s_ago, time.time()))
    return path


@pytest.fixture()
def cache(tmp_path) -> dict[str, pathlib.Path]:
    c = tmp_path / "cache"
    return {"dir": c,
            "shipped": put(c, "models/smollm2-135m/smollm2-135m-Q4_1.gguf", 4, 500),  # the oldest, yet kept longest
            "derived": put(c, "models/smollm2-135m/smollm2-135m-Q8_0.gguf", 3, 400),
            "old": put(c, "synthetic/llama-2-7b-Q4_0.gguf", 5, 300),
            "mid": put(c, "synthetic/distilgpt2-Q8_0.gguf", 2, 200),
            "new": put(c, "synthetic/tinyllama-1.1b-Q4_0.gguf", 1, 100)}


def left(cache) -> set[str]:
    return {name for name, path in cache.items() if name != "dir" and path.exists()}


@pytest.mark.parametrize("limit_mib, kept", [
    (15, {"shipped", "derived", "old", "mid", "new"}),  # within the limit: nothing evicted
    (12, {"shipped", "old", "mid", "new"}),  # the least recently used first (the shipped model is older, yet kept)
    (7, {"shipped", "mid", "new"}),
    (4, {"shipped"}),  # everything else goes before the shipped model does
    (3, set()),  # the shipped model goes only when it alone is over the limit
])
def test_the_cache_is_trimmed_least_recently_used_first_and_the_shipped_model_last(cache, limit_mib, kept):
    model_cache.trim(cache["dir"], limit_mib * MIB)
    assert left(cache) == kept
    assert model_cache.cache_bytes(cache["dir"]) <= limit_mib * MIB


def test_a_file_in_use_or_kept_is_never_evicted(cache):
    with model_cache.in_use(cache["dir"], cache["old"]):  # a run reads it: a shared lock, and it is used now
        model_cache.trim(cache["dir"], 0, keep={cache["new"]})
        assert left(cache) == {"old", "new"}
        proc = run_cli("fleetfit-agent", "models", "rm", "llama-2-7b", "--cache-dir", str(cache["dir"]))
        assert proc.returncode == 1 and "llama-2-7b Q4_0 is in use" in proc.stderr and cache["old"].exists()
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("fleetfit-agent", "models", "rm", "--synthetic", "--cache-dir", str(cache["dir"]))
    assert proc.returncode == 0 and proc.stdout.count("removed ") == 2 and left(cache) == set()
    assert_one_line_error(run_cli("fleetfit-agent", "models", "rm", "--synthetic", "--cache-dir", str(cache["dir"])),
                          "nothing to remove")


def test_models_rm_removes_one_model_or_one_precision_of_it(cache):
    proc = run_cli("fleetfit-agent", "models", "rm", "smollm2-135m", "--quant", "q8_0", "--cache-dir", str(cache["dir"]))
    assert proc.returncode == 0 and left(cache) == {"shipped", "old", "mid", "new"}, proc.stderr
    proc = run_cli("fleetfit-agent", "models", "rm", "smollm2-135m", "--cache-dir", str(cache["dir"]))
    assert proc.returncode == 0 and left(cache) == {"old", "mid", "new"}
    assert_one_line_error(run_cli("fleetfit-agent", "models", "rm", "--cache-dir", str(cache["dir"])),
                          "name a model, or --synthetic")


def test_a_cache_limit_is_a_size_or_a_share_of_the_free_disk(tmp_path):
    assert model_cache.cache_limit_bytes(tmp_path, "20GB") == 20 * 10**9
    assert model_cache.cache_limit_bytes(tmp_path, "512 MiB") == 512 * MIB
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert abs(model_cache.cache_limit_bytes(tmp_path, "25%") - free / 4) < 0.01 * free
    assert abs(model_cache.cache_limit_bytes(tmp_path) - free / 2) < 0.01 * free  # the default
    for bad in ("20", "lots", "-5GB", "5 parsecs"):
        with pytest.raises(ModelError, match="is not a size with a unit"):
            model_cache.cache_limit_bytes(tmp_path, bad)


def test_a_local_profile_waits_for_the_running_job_and_keeps_the_cache_within_its_limit(tmp_path):
    """A local profile on a device whose agent holds the run lock waits (or with --no-wait says busy and exits);
    then it runs, and the cache it grew is trimmed to its limit, the file it runs kept."""
    cache, identity = tmp_path / "cache", tmp_path / "agent-identity.json"
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache), "FLEETFIT_IDENTITY": str(identity)}
    earlier = put(cache, "synthetic/llama-3.2-1b-Q4_0.gguf", 60, 100)  # a file an earlier job left
    args = [str(BIN / "fleetfit-agent"), "profile", "--model", "distilgpt2", "--quant", "Q4_0", "--n-prompt", "16",
            "--n-gen", "4", "--repetitions", "1", "--idle-baseline", "0", "--cache-limit", "80MiB"]
    with model_cache.busy(run_lock_path(identity), "job j-1 (llama-2-7b Q4_0)"):  # as the agent holds it
        assert_one_line_error(subprocess.run([*args, "--no-wait"], capture_output=True, text=True, env=env,
                                             timeout=120), "this device is busy: pid")
        waiting = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        said = []  # the lock is held until it says it waits, however slowly a loaded machine starts it
        deadline = time.monotonic() + 120
        while not any("waiting: this device is busy" in line for line in said):
            assert time.monotonic() < deadline and waiting.poll() is None, ("the local profile did not wait", said)
            if select.select([waiting.stderr], [], [], 1)[0]:
                said.append(waiting.stderr.readline())
        assert waiting.poll() is None, "the local profile did not wait"
        assert not (cache / "synthetic" / "distilgpt2-Q4_0.gguf").exists()  # nothing made while it waits
    out, err = waiting.communicate(timeout=300)
    err = "".join(said) + err
    assert waiting.returncode == 0, err
    assert "waiting: this device is busy (pid" in err and "job j-1 (llama-2-7b Q4_0)" in err
    made = cache / "synthetic" / "distilgpt2-Q4_0.gguf"
    assert made.exists() and not earlier.exists()  # the older file made room for the new one
    assert model_cache.cache_bytes(cache) <= 80 * MIB


def test_a_synthetic_file_larger_than_the_cache_limit_is_refused_before_it_is_written(cache):
    """Eviction cannot make room for one file over the whole limit: the job is refused in one line (as a stored
    model's fetch is) instead of growing the cache past its limit, and nothing in the cache is evicted for it."""
    from fleetfit.agent import profiling
    from fleetfit.v1 import fleetfit_pb2 as pb

    before = left(cache)
    request = pb.ProfileRequest(model=pb.ModelRef(name="llama-3.2-1b"), quant="Q4_0", backend="llama.cpp",
                                n_prompt=8, n_gen=2, repetitions=1)
    with pytest.raises(ModelError, match=r"the synthetic file \(0\.\d+ GB\) is larger than this device's cache "
                                         r"limit \(0\.02 GB\): raise it with --cache-limit"):
        profiling.profile(request, "dev-1", cache["dir"], cache_limit_bytes=20 * MIB)
    assert left(cache) == before
    assert not list(cache["dir"].glob("synthetic/llama-3.2-1b*"))
