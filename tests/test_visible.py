"""An agent is visible at once: a real `fleetfit-agent run` registers before its capability trials, is listed as
"probing" while they run, and campaigns made meanwhile wait for them: what the trials allow then runs, what they rule
out is skipped with the reason. The trials are real worker processes, held (SIGSTOP) the way a slow board holds them,
so that "listed before the trials finished" is observed, not a race. The device has a GPU (the committed fake NVML at
the hardware boundary) and a CPU-only llama.cpp, so its trials rule out llama.cpp on cuda."""

import json
import os
import signal
import subprocess
import threading
import time

import psutil

from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import DEVICE_STATUS
from tests.conftest import BIN, fleet_stub, run_cli, wait_until
from tests.test_fleet import FAKE_PYNVML, ROOT, SHORT


class TrialHold(threading.Thread):
    """Stops (SIGSTOP) every worker process the agent starts, as soon as it appears, until released."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.agent, self.held, self.released = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        while not self.released.is_set():
            try:
                for child in self.agent.children():
                    if child.pid not in {p.pid for p in self.held} and "fleetfit.agent.worker" in child.cmdline():
                        child.send_signal(signal.SIGSTOP)
                        self.held.append(child)
            except psutil.Error:  # a child that ended between the listing and the look
                pass
            time.sleep(0.005)

    def release(self) -> None:
        self.released.set()
        self.join()
        for child in self.held:
            child.send_signal(signal.SIGCONT)


def test_an_agent_is_listed_at_once_as_probing_and_campaigns_wait_for_its_trials(coordinator, tmp_path, cache_dir):
    shim = tmp_path / "gpu-shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache_dir), "FLEETFIT_BACKENDS": "llama.cpp",
           "PYTHONPATH": os.pathsep.join([str(shim), ROOT])}
    stub = fleet_stub(coordinator)
    log = open(tmp_path / "agent.log", "w+")
    began = time.monotonic()
    agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address, "--insecure",
                              "--device-id", "slow-board", "--token", coordinator.join_token(),
                              "--identity", str(tmp_path / "identity.json")], env=env, stdout=log, stderr=log)
    hold = TrialHold(agent.pid)
    hold.start()
    try:
        device = wait_until(lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices, 60,
                            "the agent to be listed", every_s=0.01)[0]
        listed_s = time.monotonic() - began
        print(f"\nlisted {listed_s:.2f} s after `fleetfit-agent run` was spawned")
        assert DEVICE_STATUS.word(device.device_status) == "probing"
        assert device.inventory.trials_pending and device.inventory.ram_total_bytes and device.inventory.gpus
        assert [b.name for b in device.inventory.backends if b.available] == ["llama.cpp"]
        assert not any(b.capabilities for b in device.inventory.backends)  # nothing of the trials yet
        assert listed_s < 15  # generous: the property is "listed while probing"; the figure is printed
        wait_until(lambda: hold.held, 60, "a capability trial to start")

        shown = run_cli("fleetfit", "devices", "--format", "json", "--coordinator", coordinator.address,
                        env={"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1"})
        assert shown.returncode == 0, shown.stderr
        assert [row["status"] for row in json.loads(shown.stdout)] == ["probing"]
        people = run_cli("fleetfit", "devices", "--coordinator", coordinator.address,
                         env={"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1"})
        assert "probing" in people.stdout and "silent" not in people.stdout, people.stdout

        # campaigns made while it probes: queued (not skipped as unavailable) unless what it reported rules them out
        def campaign(backends, device):
            spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0", "int8"][:len(backends)], backends=backends,
                                   template=pb.ProfileRequest(device=device, **SHORT))
            return stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=30)

        on_cpu, on_cuda = campaign(["llama.cpp", "torch"], "cpu"), campaign(["llama.cpp"], "cuda")
        assert (len(on_cpu.job_ids), len(on_cuda.job_ids)) == (1, 1)
        assert [s for s in on_cpu.skipped if "torch smollm2-135m int8" in s and "not offered" in s], on_cpu.skipped
        assert not [s for s in [*on_cpu.skipped, *on_cuda.skipped] if "llama.cpp smollm2-135m Q4_0" in s]
        time.sleep(1.0)  # the agent takes no job while its trials run
        jobs = stub.GetJobs(pb.GetJobsRequest(job_ids=[*on_cpu.job_ids, *on_cuda.job_ids]), timeout=5).jobs
        assert [j.job_state for j in jobs] == [pb.JOB_STATE_QUEUED] * 2
    finally:
        hold.release()
    try:
        device = wait_until(lambda: [d for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices
                                     if d.device_status == pb.DEVICE_STATUS_ONLINE], 120, "the trials")[0]
        assert not device.inventory.trials_pending and device.inventory.llama_system_info
        llama = next(b for b in device.inventory.backends if b.name == "llama.cpp")
        assert {c.device.split(" ")[0] for c in llama.capabilities} == {"cpu", "cuda"}

        def status(reply):
            return stub.GetCampaign(pb.GetCampaignRequest(campaign_id=reply.campaign_id), timeout=5).campaign

        # the trials said llama.cpp here is a CPU build: the cuda job left the queue, skipped with that reason
        cuda = status(on_cuda)
        assert (cuda.queued, cuda.running, cuda.done, cuda.failed) == (0, 0, 0, 0)
        (reason,) = cuda.devices[0].skipped
        assert "llama.cpp smollm2-135m Q4_0: llama.cpp cannot run Q4_0 on cuda" in reason
        assert "capability trials" in reason
        assert not stub.GetJobs(pb.GetJobsRequest(job_ids=list(on_cuda.job_ids)), timeout=5).jobs
        # the cpu job waited for the trials and then ran
        done = wait_until(lambda: (s := status(on_cpu)).done + s.failed and s, 300, "the cpu job")
        assert (done.done, done.failed) == (1, 0), [list(d.errors) for d in done.devices]
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        log.seek(0)
        print(log.read()[-3000:])
