"""Every step that reads a model file (header walk, hashing, shape reading) is bounded: a file whose header is
past its bounds is refused at once, and one whose reading takes long (a terabyte, all of it a hole) ends at the
job's deadline or stop request, in the owner's profile, a daemon's job, and `fleetfit fit FILE`."""

import struct
import threading
import time

import pytest

from fleetfit.agent import daemon, model_cache, profiling
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.agent.test_hostile_inputs import ARRAY, STRING, U32, kv, s, sparse, tensor
from tests.conftest import assert_one_line_error, run_cli

TIB = 1 << 40


def terabyte_of_tensors(tmp_path):
    """A well-formed GGUF whose one F32 tensor is 1 TiB, all of it a hole: the walk accepts it, hashing it
    would read a terabyte."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    body = head + kv("general.architecture", STRING, s("llama")) + kv("general.file_type", U32, struct.pack("<I", 0))
    body += tensor("t.weight", (TIB // 4,), 0, 0)
    body += b"\0" * (-len(body) % 32)
    return sparse(tmp_path, [body], len(body) + TIB, name="terabyte.gguf")


def request(path, timeout_s: float) -> pb.ProfileRequest:
    return profiling.make_request(str(path), backend="llama.cpp", n_prompt=16, n_gen=8, repetitions=1, threads=1,
                                  timeout_s=timeout_s, idle_baseline_s=0)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The device probes (measured once per device, before any job's clock) already in a cache."""
    from fleetfit.agent import device_probe

    cache = tmp_path_factory.mktemp("cache")
    device_probe.probes(cache)
    return cache


def test_hashing_a_terabyte_ends_at_the_jobs_deadline(tmp_path, probed):
    path = terabyte_of_tensors(tmp_path)
    start = time.monotonic()
    result = profiling.profile(request(path, 2), "dev-1", probed)
    assert time.monotonic() - start < 2 + 3
    assert result.failure == pb.FAILURE_KIND_TIMEOUT
    assert result.error == "no result within the job's limit of 2 s (reached during the hashing of the model file)"
    assert not result.model_sha256


def test_a_daemon_job_reading_a_terabyte_in_an_allowed_dir_ends_at_stop(tmp_path, probed):
    path = terabyte_of_tensors(tmp_path)
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    start = time.monotonic()
    result = daemon.run_job(pb.Job(job_id="j1", request=request(path, 20)), "dev-1", probed, [tmp_path], stop)
    assert time.monotonic() - start < 2 + 3
    assert result.failure == pb.FAILURE_KIND_ERROR
    assert result.error == "the agent was asked to stop during the hashing of the model file"


def test_the_owners_profile_command_ends_at_its_timeout(tmp_path, probed):
    path = terabyte_of_tensors(tmp_path)
    start = time.monotonic()
    proc = run_cli("fleetfit-agent", "profile", "--model", str(path), "--timeout", "2", "--cache-dir", str(probed),
                   "--idle-baseline", "0", "--repetitions", "1", "--n-prompt", "16", "--n-gen", "8", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "reached during the hashing of the model file" in proc.stdout, proc.stdout
    assert time.monotonic() - start < 60  # startup included; before: still hashing after 100 s


def test_a_model_followed_by_a_terabyte_hole_is_refused_before_any_reading(tmp_path, probed):
    """A real model copied and truncated to 1 TiB: refused by the walk (bytes past the tensor data), not hashed."""
    from tests.agent.test_hostile_inputs import valid_gguf

    path = sparse(tmp_path, [valid_gguf()], TIB, name="copy.gguf")
    start = time.monotonic()
    job = daemon.run_job(pb.Job(job_id="j1", request=request(path, 20)), "dev-1", probed, [tmp_path])
    assert job.error == model_cache.UNUSABLE  # a job's refusal tells nothing of the file
    with pytest.raises(ModelError, match="past the end of its tensor data"):  # the owner is told why
        profiling.profile(request(path, 20), "dev-1", probed)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("parts, size, fragment", [
    ([b"GGUF" + struct.pack("<IQQ", 3, 0, 1), kv("x", ARRAY, struct.pack("<IQ", ARRAY, 1 << 36))], TIB,
     "larger than 64 MiB"),
    ([b"GGUF" + struct.pack("<IQQ", 3, 0, 1), kv("x", ARRAY, struct.pack("<IQ", STRING, 4_000_000))], 64 << 20,
     "strings and arrays"),
])
def test_fit_file_refuses_a_header_past_its_bounds_in_one_line(tmp_path, parts, size, fragment):
    """`fleetfit fit FILE` reads the header on the operator's machine: refused at once, before any coordinator."""
    path = sparse(tmp_path, parts, size)
    start = time.monotonic()
    proc = run_cli("fleetfit", "fit", str(path), "--quant", "Q4_0", timeout=120)
    assert_one_line_error(proc, fragment)
    assert time.monotonic() - start < 60  # startup included; before: ~1.7 days of walking
