"""Queries have no side effects; work is an explicit, cancellable campaign. End to end with real parts: a
coordinator, one real `fleetfit-agent run` process, real llama.cpp on synthetic files, and the `fleetfit` CLI.

- `fit` (also about a model the device never ran) queues nothing and the agent makes no file;
- `fleetfit calibrate` and `fit --calibrate` create ordinary campaigns, listed by `campaigns`;
- `fleetfit campaign cancel` drops queued jobs and stops a running one on its device (heard through the lease's
  heartbeat): its worker ends, the synthetic file it wrote is removed, its result is stored and the job is
  cancelled; cancelling again changes nothing; an unknown id is one line;
- while the agent runs a job, a local `fleetfit-agent profile --no-wait` says the device is busy."""

import os
import subprocess
import time

import pytest

from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, assert_one_line_error, fleet_stub, run_cli, stop_processes, wait_until

DEVICE = "board-1"


@pytest.fixture()
def fleet(tmp_path):
    coordinator = BackgroundCoordinator(tmp_path / "fleet.sqlite3", state_dir=tmp_path / "state", lease_s=3.0)
    coordinator.start()
    cache, identity = tmp_path / "cache", tmp_path / "agent-identity.json"
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache), "FLEETFIT_IDENTITY": str(identity)}
    log = open(tmp_path / "agent.log", "w")
    agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address, "--insecure",
                              "--device-id", DEVICE, "--token", coordinator.join_token()],
                             env=env, stdout=log, stderr=log)
    stub = fleet_stub(coordinator)
    wait_until(lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices or agent.poll() is not None,
               120, "the agent to register")
    assert agent.poll() is None, (tmp_path / "agent.log").read_text()
    cli_env = {"FLEETFIT_COORDINATOR": coordinator.address, "FLEETFIT_INSECURE": "1",
               "FLEETFIT_STATE_DIR": str(tmp_path / "state")}
    yield coordinator, stub, agent, cache, env, cli_env, tmp_path / "agent.log"
    stop_processes(agent)
    coordinator.stop()


def campaign_of(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("campaign "))
    return line.split()[1].rstrip(":")


def workers_of(pid: int) -> list[int]:
    """The agent's worker processes (python -m fleetfit.agent.worker, children of the agent)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"fleetfit.agent.worker" in command:
            found.append(int(entry))
    return found


def test_a_question_starts_nothing_and_a_cancelled_campaign_stops_on_the_device(fleet):
    coordinator, stub, agent, cache, agent_env, env, log = fleet

    def campaign(campaign_id: str) -> pb.CampaignStatus:
        return stub.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign_id), timeout=10).campaign

    for model in ("llama-2-7b", "qwen3-4b", "distilgpt2"):  # questions, also about models never run there
        proc = run_cli("fleetfit", "fit", model, "--quant", "Q4_0", "--device", DEVICE, env=env)
        assert proc.returncode == 0, proc.stderr
    time.sleep(2)
    assert not stub.ListCampaigns(pb.ListCampaignsRequest(), timeout=10).campaigns
    assert coordinator.store.devices_with_queued_jobs() == set() and coordinator.store.open_jobs(DEVICE) == []
    assert not list(cache.glob("synthetic/*.gguf")), "a question made the agent write a file"

    # a long run (a synthetic distilgpt2, many repetitions), then two calibrations queued behind it
    long = campaign_of(run_cli("fleetfit", "profile", "--select", f"device={DEVICE}", "--models", "distilgpt2",
                               "--quants", "Q8_0", "--n-prompt", "128", "--n-gen", "64", "--repetitions", "100",
                               env=env))
    calibration = campaign_of(run_cli("fleetfit", "calibrate", DEVICE, "tinyllama-1.1b", "--quant", "Q4_0", env=env))
    asked = campaign_of(run_cli("fleetfit", "fit", "distilgpt2", "--quant", "Q4_0", "--device", DEVICE,
                                "--calibrate", "--json", env=env))
    listed = run_cli("fleetfit", "campaigns", env=env).stdout
    assert all(c in listed for c in (long, calibration, asked)), listed
    spec = campaign(calibration).spec
    assert (list(spec.models), list(spec.quants), spec.template.n_prompt) == (["tinyllama-1.1b"], ["Q4_0"], 64)

    written = cache / "synthetic" / "distilgpt2-Q8_0.gguf"
    wait_until(lambda: campaign(long).running and written.exists() and workers_of(agent.pid), 180,
               "the long job to run on the device")
    busy = subprocess.run([str(BIN / "fleetfit-agent"), "profile", "--model", "distilgpt2", "--quant", "Q8_0",
                           "--no-wait"], capture_output=True, text=True, env=agent_env, timeout=60)
    assert_one_line_error(busy, f"this device is busy: pid {agent.pid} runs job")

    for queued in (calibration, asked):
        dropped = run_cli("fleetfit", "campaign", "cancel", queued, env=env)
        assert dropped.returncode == 0 and "1 queued job(s) cancelled, 0 running" in dropped.stdout, dropped.stderr
        assert (campaign(queued).cancelled, campaign(queued).queued) == (1, 0)
    stopping = run_cli("fleetfit", "campaign", "cancel", long, env=env)
    assert "0 queued job(s) cancelled, 1 running job(s) being stopped" in stopping.stdout, stopping.stderr
    ended = wait_until(lambda: (c := campaign(long)).cancelled and c, 60, "the running job to be stopped")
    assert (ended.cancelled, ended.running, ended.done, ended.failed) == (1, 0, 0, 0)
    assert not workers_of(agent.pid) or wait_until(lambda: not workers_of(agent.pid), 10, "the worker to end")
    assert not written.exists(), "the cancelled job's synthetic file was left in the cache"
    (job,) = coordinator.store.campaign_jobs(long)
    (stored,) = [r for r in coordinator.store.results() if r.result_id == job.result_id]
    # stopped in whichever phase the cancel found it (the idle baseline between writing the file and the run, or the
    # run): both are a running job, and the result names the phase
    assert stored.failure and "cancelled by the operator" in stored.error and " during the " in stored.error
    again = run_cli("fleetfit", "campaign", "cancel", long, env=env)
    assert again.returncode == 0 and "0 queued job(s) cancelled, 0 running" in again.stdout
    assert_one_line_error(run_cli("fleetfit", "campaign", "cancel", "no-such-campaign", env=env),
                          "NOT_FOUND: no campaign 'no-such-campaign'")
    status = run_cli("fleetfit", "campaign", "status", long, env=env).stdout
    assert "cancelled 1" in status, status
    assert agent.poll() is None, log.read_text()  # the agent goes on serving
