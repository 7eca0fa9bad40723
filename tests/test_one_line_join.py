"""The one-line join from the coordinator alone (issue 30 items 1-3, test (a)), on loopback: `fleetfit serve
--install-listen` serves join.sh and the wheelhouse `fleetfit wheelhouse add` filled; two "devices" (fresh venvs,
homes and prefixes) run the line `fleetfit token create` prints, with pip's configuration off and every proxy
variable pointed at a closed port, so anything fetched from elsewhere than the coordinator fails. The first device
of the class finds no llama.cpp wheel in the fleet, takes its "build" (FLEETFIT_LLAMA_WHEEL: install.sh's wheel from
this machine's wheelhouse; compiling is install.sh's, tested there), checks and uploads it; the second installs the
fleet's wheel and checks it. A token whose CA fingerprint does not match is refused before anything is installed."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from fleetfit.agent import llama_wheel
from fleetfit.models.backends import llama_cpp_python_pin
from fleetfit.coordinator.service.store import Store
from tests.conftest import BIN, run_cli, stop_processes, wait_until
from tests.test_reliability import free_port

WHEELHOUSE = pathlib.Path(os.environ.get("FLEETFIT_WHEELHOUSE", pathlib.Path.home() / ".cache/fleetfit/wheelhouse"))


def built_wheel() -> pathlib.Path | None:
    """The llama-cpp-python wheel install.sh built on this machine and that passed its check, if any."""
    for checked in sorted(WHEELHOUSE.glob("*/check-passed")):
        wheels = sorted(checked.parent.glob(f"llama_cpp_python-{llama_cpp_python_pin()}-*.whl"))
        if wheels:
            return wheels[0]
    return None


def device_env(root: pathlib.Path, closed_port: int) -> dict:
    """A device that reaches only the coordinator (127.0.0.1): its own home, no pip configuration, every proxy
    variable at a closed port (only loopback is exempt, where the coordinator is)."""
    dead = f"http://127.0.0.1:{closed_port}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))
           and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FLEETFIT_IDENTITY")}
    (root / "home").mkdir(parents=True)
    return {**env, "HOME": str(root / "home"), "XDG_CONFIG_HOME": str(root / "home/.config"),
            "XDG_CACHE_HOME": str(root / "home/.cache"), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_CACHE_DIR": "1",
            **{v: dead for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy",
                                 "ftp_proxy", "FTP_PROXY")},
            "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}


def join_line(line: str, root: pathlib.Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    python = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run(["sh", "-c", f"{line} --no-service --prefix {root / 'prefix'} --python {python} "
                           + " ".join(extra)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_a_device_joins_with_one_line_from_the_coordinator_alone(tmp_path):
    wheel = built_wheel()
    if wheel is None:
        pytest.skip(f"no checked llama-cpp-python wheel in {WHEELHOUSE}: run scripts/install.sh first")
    state, grpc_port, install_port = tmp_path / "state", free_port(), free_port()
    db = str(tmp_path / "fleet.sqlite3")
    added = run_cli("fleetfit", "wheelhouse", "add", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
                    "--platform", "manylinux_2_28_x86_64", "--state-dir", str(state), timeout=600)
    assert added.returncode == 0, added.stderr
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", db, "--state-dir", str(state), "--listen",
                                  f"127.0.0.1:{grpc_port}", "--install-listen", f"127.0.0.1:{install_port}"],
                                 stdout=log, stderr=log)
    try:
        wait_until(lambda: (state / "install-url").exists() or serve.poll() is not None, 60, "the coordinator")
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        lines = {}
        for d in ("first", "second", "forged"):
            made = run_cli("fleetfit", "token", "create", "--db", db, "--state-dir", str(state))
            assert made.returncode == 0, made.stderr
            lines[d] = made.stdout.strip()
        assert lines["first"].startswith(f"curl -fsSk https://127.0.0.1:{install_port}/join.sh | sh -s -- --token ")
        closed = free_port()

        # a token whose CA fingerprint is not the coordinator's: refused before anything is sent or installed
        secret = lines["forged"].rsplit(" ", 1)[1].split(".")[0]
        forged = lines["forged"].rsplit(" ", 1)[0] + f" {secret}.{'0' * 64}"
        refused = join_line(forged, tmp_path / "forged", device_env(tmp_path / "forged", closed))
        assert refused.returncode != 0
        assert "does not present the CA this token pins" in refused.stderr, refused.stderr
        assert not (tmp_path / "forged/prefix").exists()  # no venv, nothing installed
        with Store(db) as store:
            assert store.device_labels() == {}

        # --dry-run prints the steps and does nothing
        dry = join_line(lines["first"], tmp_path / "dry", device_env(tmp_path / "dry", closed), "--dry-run")
        assert dry.returncode == 0 and "would make the venv" in dry.stdout, dry.stderr
        assert not (tmp_path / "dry/prefix").exists()

        timings = {}
        for d in ("first", "second"):
            env = {**device_env(tmp_path / d, closed), "FLEETFIT_LLAMA_WHEEL": str(wheel)}
            if d == "second":
                env.pop("FLEETFIT_LLAMA_WHEEL")  # nothing to build from: the fleet's wheel, or a failure
            began = time.monotonic()
            done = join_line(lines[d], tmp_path / d, env, "--device-id", f"one-line-{d}")
            timings[d] = time.monotonic() - began
            assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
            record = json.loads(next((tmp_path / d / "prefix/venv").glob("share/fleetfit/llama-cpp-build.json"))
                                .read_text())
            assert record["device_class"] == llama_wheel.device_class()
            if d == "first":
                assert "uploaded (201)" in done.stdout and record["source"] == "built here", done.stdout
            else:
                assert record["source"].startswith("the fleet's wheel for"), done.stdout
            identity = json.loads((tmp_path / d / "home/.config/fleetfit/agent-identity.json").read_text())
            assert identity["device_id"] == f"one-line-{d}"

        listed = run_cli("fleetfit", "wheelhouse", "--json", "--state-dir", str(state))
        held = json.loads(listed.stdout)["llama"]
        assert [h["class"] for h in held] == [llama_wheel.device_class()]
        assert held[0]["build"]["uploaded_by"] == "one-line-first"

        # rerunning the line is harmless: joined already, llama.cpp kept
        again = join_line(lines["second"], tmp_path / "second", {**device_env(tmp_path / "again", closed),
                                                                 "HOME": str(tmp_path / "second/home"),
                                                                 "XDG_CONFIG_HOME": str(tmp_path / "second/home/.config")})
        assert again.returncode == 0, again.stderr[-2000:]
        assert "already joined" in again.stdout and "already installed and checked" in again.stdout
        with Store(db) as store:
            assert sorted(store.device_labels()) == ["one-line-first", "one-line-second"]
        print(f"\none-line join from the coordinator alone: first device of the class {timings['first']:.0f} s "
              f"(llama.cpp wheel given, checked, uploaded), second {timings['second']:.0f} s (the fleet's wheel)")
    finally:
        stop_processes(serve)
