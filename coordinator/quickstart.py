"""`fleetfit quickstart`: the main job on one machine, on embedded defaults.

A coordinator on a free loopback port (SQLite), a local agent process connected to it, the real
SmolLM2-135M at Q4_1 pulled and F16/Q8_0/Q4_0 derived by that agent, all four profiled with llama.cpp,
then the limit table and a fit answer.
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from fleetfit.coordinator.answers import render, tables
from fleetfit.coordinator.answers.fit import fit_table
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1.words import JOB_STATE
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import CALL_TIMEOUT_S, connect, default_device_id

QUICKSTART_MODEL = "smollm2-135m"
QUICKSTART_QUANTS = ("Q4_1", "F16", "Q8_0", "Q4_0")


class QuickstartError(Exception):
    """The quickstart could not complete; the message is one line for users."""


def _wait_for_device(fleet, agent: subprocess.Popen, device_id: str, since: float, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise QuickstartError(f"the local agent exited with status {agent.returncode} before registering")
        for device in fleet.ListDevices(pb.ListDevicesRequest(), timeout=CALL_TIMEOUT_S).devices:
            if device.inventory.device_id == device_id and device.last_seen_unix_s >= since:
                return device_id
        time.sleep(0.2)
    raise QuickstartError(f"the local agent did not register within {timeout_s:.0f} s")


def _wait_for_jobs(fleet, agent: subprocess.Popen, job_ids: dict[str, str], echo) -> list[pb.JobStatus]:
    """Wait for every job (id -> what it runs, e.g. "smollm2-135m Q4_0 on llama.cpp"), a line as each ends."""
    reported = set()
    while True:
        jobs = fleet.GetJobs(pb.GetJobsRequest(job_ids=list(job_ids)), timeout=CALL_TIMEOUT_S).jobs
        for job in jobs:
            if job.job_state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED) and job.job_id not in reported:
                reported.add(job.job_id)
                echo(f"  [{len(reported)}/{len(job_ids)}] {job_ids[job.job_id]}: {JOB_STATE.word(job.job_state)} (job {job.job_id[:8]})"
                     + (f": {job.error}" if job.error else ""))
        if len(reported) == len(job_ids):
            return list(jobs)
        if agent.poll() is not None:
            raise QuickstartError(f"the local agent exited with status {agent.returncode} with jobs unfinished")
        time.sleep(0.5)


def summary(fleet, echo, width: int | None = None) -> list[pb.FitAnswer]:
    """Quickstart's closing summary, sized for the terminal: the measured table and fit's answer for
    QUICKSTART_MODEL at Q4_0, each with what to run next."""
    table = fleet.GetTable(pb.GetTableRequest(name="measured"), timeout=CALL_TIMEOUT_S).table
    body = [[tables.typed_cell(c) for c in row.cells] for row in table.rows]
    echo("\nMeasured here (fleetfit limits; --wide for ids, -o csv for every field):\n")
    echo(render.render(list(table.columns), body, "table", table="measured", width=width))
    answers = fleet.Fit(pb.FitRequest(model_name=QUICKSTART_MODEL, quant="Q4_0"), timeout=CALL_TIMEOUT_S).answers
    echo(f"\nDoes {QUICKSTART_MODEL} Q4_0 fit? (fleetfit fit {QUICKSTART_MODEL} --quant Q4_0; ~ predicted, "
         "bare measured):\n")
    echo(render.render(*fit_table(answers), "table", table="fit", width=width))
    return list(answers)


def run(db_path: pathlib.Path, echo, n_prompt: int, n_gen: int, repetitions: int,
        cache_dir: pathlib.Path | None = None) -> list[pb.FitAnswer]:
    coordinator = BackgroundCoordinator(db_path)
    port = coordinator.start()
    address = f"127.0.0.1:{port}"
    echo(f"coordinator listening on {address}, results stored in {db_path}")
    env = dict(os.environ)
    if cache_dir is not None:
        env["FLEETFIT_CACHE_DIR"] = str(cache_dir)
    since = time.time()
    # Plaintext on loopback; the local agent still enrolls with a join token and authenticates every call. The
    # token is bound to this machine's device id, so a second quickstart on the same database re-enrolls the
    # device (its previous run's credential is replaced) instead of being refused as already enrolled.
    device_id = default_device_id()
    agent_dir = tempfile.TemporaryDirectory(prefix="fleetfit-quickstart-")
    env["FLEETFIT_JOIN_TOKEN"] = coordinator.join_token(expires_s=600, device_id=device_id)
    agent = subprocess.Popen([sys.executable, "-m", "fleetfit.agent", "run", "--coordinator", address, "--insecure",
                              "--device-id", device_id,
                              "--identity", str(pathlib.Path(agent_dir.name) / "identity.json")], env=env)
    try:
        with connect(address, token=coordinator.operator_token) as channel:
            fleet = pb_grpc.FleetServiceStub(channel)
            _wait_for_device(fleet, agent, device_id, since, timeout_s=120)
            echo(f"agent registered as {device_id}; profiling {QUICKSTART_MODEL} at {', '.join(QUICKSTART_QUANTS)} "
                 f"(the agent pulls the model and derives the other precisions on first use)")
            job_ids = {}
            for quant in QUICKSTART_QUANTS:
                request = pb.ProfileRequest(model=pb.ModelRef(name=QUICKSTART_MODEL), backend="llama.cpp",
                                            quant=quant, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions)
                for job_id in fleet.SubmitProfile(pb.SubmitProfileRequest(device_ids=[device_id], request=request),
                                                  timeout=CALL_TIMEOUT_S).job_ids:
                    job_ids[job_id] = f"{QUICKSTART_MODEL} {quant} on llama.cpp"
            _wait_for_jobs(fleet, agent, job_ids, echo)
            answers = summary(fleet, echo)
            return list(answers)
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        coordinator.stop()
        agent_dir.cleanup()
