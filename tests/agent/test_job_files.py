"""What a job may name: catalogue, real or cached model names, never paths; files only inside the directories the
device's owner allowed, after resolving symlinks; refusals that tell nothing about the file."""

import os
import pathlib

import pytest

from fleetfit.agent import daemon, model_cache, profiling
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb

SECRET = b"SECRET-BYTES-0123456789"


def job_request(**model) -> pb.ProfileRequest:
    return pb.ProfileRequest(model=pb.ModelRef(**model), backend="llama.cpp", n_prompt=16, n_gen=8, repetitions=1,
                             threads=2, idle_baseline_s=0)


@pytest.fixture()
def places(tmp_path, ladder):
    """An allowed directory with a real GGUF, a non-GGUF file, a FIFO and a symlink leading out; and, outside it,
    a real GGUF and a file with secret bytes."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    os.link(ladder["Q4_0"], allowed / "model.gguf")
    os.link(ladder["Q4_0"], outside / "model.gguf")
    (outside / "secret.gguf").write_bytes(SECRET)
    (allowed / "notes.gguf").write_bytes(SECRET)
    os.mkfifo(allowed / "pipe.gguf")
    (allowed / "escape.gguf").symlink_to(outside / "model.gguf")
    (allowed / "loop.gguf").symlink_to(allowed / "loop.gguf")
    return {"allowed": allowed, "outside": outside}


@pytest.mark.parametrize("name", ["/etc/passwd", "../models/smollm2-135m", "a/b", "..", ".hidden", "smollm2 135m",
                                  "smollm2-135m\n", "x" * 129, "..\\x", "sm\u00f6llm"])
def test_a_name_is_never_a_path(cache_dir, name):
    with pytest.raises(ModelError) as refused:
        profiling.profile(job_request(name=name), "dev-1", cache_dir, allowed_dirs=[])
    assert str(refused.value) == model_cache.NAME_REFUSED


def test_a_path_outside_the_allowed_directories_is_refused_the_same_way_whatever_it_is(cache_dir, places):
    outside, allowed = places["outside"], places["allowed"]
    paths = [outside / "model.gguf", outside / "secret.gguf", outside / "absent.gguf", outside,
             pathlib.Path("/proc/self/status"), allowed / "escape.gguf", allowed / "pipe.gguf", allowed / "loop.gguf", allowed / "absent.gguf",
             allowed / ".." / "outside" / "model.gguf"]
    errors = set()
    for path in paths:
        with pytest.raises(ModelError) as refused:
            profiling.profile(job_request(path=str(path)), "dev-1", cache_dir, allowed_dirs=[allowed])
        errors.add(str(refused.value))
    assert errors == {model_cache.PATH_REFUSED}  # nothing says whether a file exists, or what it holds


def test_a_bad_file_inside_an_allowed_directory_is_refused_without_quoting_it(cache_dir, places):
    with pytest.raises(ModelError) as refused:
        profiling.profile(job_request(path=str(places["allowed"] / "notes.gguf")), "dev-1", cache_dir,
                          allowed_dirs=[places["allowed"]])
    assert str(refused.value) == model_cache.UNUSABLE and "SECRET" not in str(refused.value)


def test_a_file_inside_an_allowed_directory_runs(cache_dir, places):
    result = profiling.profile(job_request(path=str(places["allowed"] / "model.gguf")), "dev-1", cache_dir,
                               allowed_dirs=[places["allowed"]])
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    assert result.model_file == os.path.realpath(places["allowed"] / "model.gguf") and result.quant == "Q4_0"


def test_a_job_naming_a_file_outside_is_a_failed_result_that_reveals_nothing(cache_dir, places):
    job = pb.Job(job_id="j1", request=job_request(path=str(places["outside"] / "secret.gguf")))
    result = daemon.run_job(job, "dev-1", cache_dir, [places["allowed"]])
    assert result.failure == pb.FAILURE_KIND_ERROR and result.error == model_cache.PATH_REFUSED
    no_dirs = daemon.run_job(job, "dev-1", cache_dir)  # no --allow-dir: no file at all
    assert no_dirs.error == model_cache.PATH_REFUSED
    by_name = daemon.run_job(pb.Job(job_id="j2", request=job_request(name=str(places["outside"] / "model.gguf"))),
                             "dev-1", cache_dir, [places["allowed"]])
    assert by_name.error == model_cache.NAME_REFUSED


def test_the_owner_at_their_terminal_may_name_any_file(cache_dir, places):
    request = profiling.make_request(str(places["outside"] / "model.gguf"), n_prompt=16, n_gen=8, repetitions=1,
                                     threads=2, idle_baseline_s=0)
    assert profiling.profile(request, "dev-1", cache_dir).failure == pb.FAILURE_KIND_UNSPECIFIED


def _swap_dir(allowed, outside):
    os.rename(allowed / "sub", allowed / "sub.old")
    (allowed / "sub").symlink_to(outside)


def _swap_file(allowed, outside):
    os.rename(allowed / "sub" / "model.gguf", allowed / "sub" / "model.old")
    (allowed / "sub" / "model.gguf").symlink_to(outside / "model.gguf")


@pytest.mark.parametrize("swap, point", [(_swap_dir, "before the worker starts"),
                                         (_swap_file, "after the header is read")])
def test_a_path_swapped_for_a_symlink_after_the_check_cannot_redirect_the_job(cache_dir, ladder, tmp_path,
                                                                              monkeypatch, swap, point):
    """The file is opened once, checked on its descriptor, and read through it by the agent and the worker: a
    directory (or the file) swapped for a symlink leading out at any later moment changes nothing."""
    import contextlib

    from fleetfit.agent.backends.llama_cpp_backend import LlamaCpp
    from fleetfit.models.gguf_file import sha256_of

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    os.link(ladder["Q4_0"], allowed / "sub" / "model.gguf")
    (outside / "model.gguf").write_bytes(SECRET)  # what the swap leads to: the worker fails if it opens this
    swapped = []

    def once():
        if not swapped:
            swap(allowed, outside)
            swapped.append(point)

    if point == "before the worker starts":  # the last hook before the worker opens the model
        monkeypatch.setattr(LlamaCpp, "preparing", lambda self, target, cache: (once(), contextlib.nullcontext())[1])
    else:
        inspect = model_cache.inspect
        monkeypatch.setattr(model_cache, "inspect", lambda *a, **k: (inspect(*a, **k), once())[0])
    path = allowed / "sub" / "model.gguf"
    result = profiling.profile(job_request(path=str(path)), "dev-1", cache_dir, allowed_dirs=[allowed])
    assert swapped == [point]
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    assert result.model_sha256 == sha256_of(ladder["Q4_0"]) and result.quant == "Q4_0"
    assert result.model_file == str(allowed.resolve() / "sub" / "model.gguf")  # where it was when opened
    assert result.decode_tokens_per_s.mean > 0
