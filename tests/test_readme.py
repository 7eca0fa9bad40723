"""The README's examples stay true (issue 32 item 4): every command in its `console` blocks (lines starting `$ `) is
run, in order, as a user would type it, against a real TLS coordinator (`fleetfit serve` on loopback) and a real
agent profiling SmolLM2-135M with llama.cpp (short runs). A block's placeholders take what earlier commands
printed: TOKEN (token create's line), ID (the campaign's id), HOST:50051 (the coordinator's address). `fleetfit
serve` is the one this test starts on loopback."""

import os
import pathlib
import re
import shlex
import signal
import subprocess

import pytest

from tests.conftest import BIN, stop_processes, wait_until

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SHORT_RUN = ["--n-prompt", "16", "--n-gen", "4", "--repetitions", "1"]  # `fleetfit profile`: seconds, not minutes
BACKGROUND = ("fleetfit-agent run",)  # runs until stopped: started, and stopped at the end


def examples() -> list[str]:
    """The commands of the README's console blocks, in order (a `\\` at a line's end continues it)."""
    commands, block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```console"
            continue
        if block and line.startswith("$ "):
            commands.append(line[2:])
        elif block and commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + " " + line.strip()
    return commands


def test_the_readme_shows_the_three_jobs():
    text = README.read_text()
    for heading in ("## Add a device", "## Profile the fleet", "## Ask what fits", "## Reference"):
        assert heading in text
    shown = examples()
    for command in ("fleetfit token create", "fleetfit-agent join", "fleetfit profile", "fleetfit campaign status",
                    "fleetfit fit", "fleetfit limits", "fleetfit report"):
        assert any(c.startswith(command) for c in shown), command


def test_every_readme_example_runs(tmp_path, cache_dir):
    state, home = tmp_path / "state", tmp_path / "home"
    home.mkdir()
    serve = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(tmp_path / "fleet.sqlite3"), "--state-dir",
                              str(state), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    background = []
    try:
        line = serve.stdout.readline()
        assert "listening on" in line, line
        address = line.split("listening on ")[1].split(",")[0]
        env = {**os.environ, "FLEETFIT_STATE_DIR": str(state), "FLEETFIT_COORDINATOR": address, "HOME": str(home),
               "FLEETFIT_CACHE_DIR": str(cache_dir), "FLEETFIT_IDENTITY": str(tmp_path / "identity.json"),
               "COLUMNS": "120"}
        found: dict[str, str] = {"HOST:50051": address}
        ran = 0
        for command in examples():
            for placeholder, value in found.items():
                command = command.replace(placeholder, value)
            argv = shlex.split(command.rstrip("&"))
            if argv[:2] == ["fleetfit", "serve"]:
                continue  # the coordinator this test started, on loopback
            if argv[:2] == ["fleetfit", "profile"]:
                argv += SHORT_RUN
            argv[0] = str(BIN / argv[0])
            if any(command.startswith(b) for b in BACKGROUND):
                background.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL))
                wait_until(lambda: '"status"' in subprocess.run([str(BIN / "fleetfit"), "devices", "-o", "json"],
                                                                env=env, capture_output=True, text=True).stdout,
                           120, "the agent to register")
                continue
            done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
            if os.environ.get("FLEETFIT_README_SHOW"):  # to refresh the README's outputs
                print(f"$ {command}\n{done.stdout}{done.stderr}")
            assert done.returncode == 0, f"$ {command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            ran += 1
            if argv[1:3] == ["token", "create"]:
                found["TOKEN"] = done.stdout.strip().splitlines()[-1]
            if match := re.match(r"campaign (\w+): ", done.stdout):
                found["ID"] = match.group(1)
        assert ran >= 7 and {"TOKEN", "ID"} <= set(found)
        assert (tmp_path / "report" / "index.html").exists()
    finally:
        stop_processes(*background)
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)


@pytest.mark.parametrize("command", [c for c in examples() if c.startswith("fleetfit")])
def test_every_example_command_has_help(command):
    """Each example's command exists in this build (its help answers)."""
    argv = shlex.split(command)
    words = []
    for word in argv[1:3]:
        if not re.fullmatch(r"[a-z]+(-[a-z]+)*", word):  # an option, a value or a model name: the command ends
            break
        words.append(word)
    done = subprocess.run([str(BIN / argv[0]), *words, "-h"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stderr
