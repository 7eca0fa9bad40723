"""Chaos, end to end with real parts: while campaigns run on three `fleetfit-agent run` processes (one hostname,
three device ids, real llama.cpp runs of SmolLM2) against a `fleetfit serve` process, the coordinator's trouble
comes and goes — its database locked for 15 s, its PostgreSQL connections terminated, its disk full and then
emptied, the coordinator SIGKILLed and restarted on the same port and database. At the end every job is done
exactly once, every result the agents measured is stored (none dead-lettered, none lost) and every agent is still
running. On SQLite and on PostgreSQL."""

import contextlib
import errno
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import time
import uuid

import grpc
import pytest

from fleetfit.agent import device_probe
from fleetfit.coordinator.service.db import MIGRATIONS
from fleetfit.coordinator.service.enrollment import join_token_text
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect
from tests.conftest import BIN, stop_processes, wait_until
from tests.test_reliability import free_port

DEVICES = ("chaos-a", "chaos-b", "chaos-c")
QUANTS = ("Q4_0", "Q8_0")  # each a real file in the session's cache: no derivation inside the test
SHORT = pb.ProfileRequest(n_prompt=8, n_gen=2, repetitions=1, idle_baseline_s=0.0)
LOCK_S = 15.0
TABLES = sorted(set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", "".join(MIGRATIONS))) | {"schema_migrations"})
JOB_LINE = re.compile(r"\bjob ([0-9a-f-]{36}): ")  # daemon.serve_jobs: one line as each job starts


class Serve:
    """`fleetfit serve` as an operator runs it, on one port and database across restarts."""

    def __init__(self, url: str, state: pathlib.Path, log: pathlib.Path):
        self.url, self.state, self.log = url, state, log
        self.address = f"127.0.0.1:{free_port()}"
        self.proc = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", self.url, "--listen", self.address,
                                          "--state-dir", str(self.state), "--insecure"], stdout=log, stderr=log)
        self.stub = wait_until(self._answering, 60, "the coordinator to answer", every_s=0.3)

    def _answering(self):
        """An operator stub once the coordinator answers ListDevices; None before."""
        assert self.proc.poll() is None, f"the coordinator exited: {self.log.read_text()[-2000:]}"
        try:
            channel = connect(self.address, 2, token=(self.state / "operator.token").read_text().strip())
        except Exception:  # no token written yet, or not listening yet
            return None
        stub = pb_grpc.FleetServiceStub(channel)
        try:
            stub.ListDevices(pb.ListDevicesRequest(), timeout=5)
        except grpc.RpcError:
            channel.close()
            return None
        return stub

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def small_disk(path: pathlib.Path):
    """A 32 MiB tmpfs at `path` (the coordinator's disk, to fill); yields why not when it cannot be mounted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(path)], capture_output=True,
                             text=True)
    try:
        yield None if mounted.returncode == 0 else (mounted.stderr.strip() or "mount failed")
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: pathlib.Path) -> pathlib.Path:
    """Write a file until the disk refuses (ENOSPC); the file stays until removed."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        chunk = b"\1" * (1 << 20)
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


def lock_database(url: str, seconds: float) -> None:
    """Hold the whole database for `seconds` from another connection, as a backup or an operator's import does."""
    if url.startswith("postgresql"):
        import psycopg
        with psycopg.connect(url) as conn:  # one transaction, rolled back when the block ends
            conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
            time.sleep(seconds)
        return
    conn = sqlite3.connect(url, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def terminate_backends(url: str, application_name: str) -> int:
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                                (application_name,)).fetchall())


def outbox_counts(path: pathlib.Path) -> dict[str, int]:
    """The agent's outbox counters, with what it still holds ("pending") and its dead letters, read beside the
    running agent."""
    conn = sqlite3.connect(path)
    try:
        counts = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        counts["pending"] = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'").fetchone():
            counts["dead_letters"] = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()
    return counts


@pytest.mark.slow
def test_the_fleet_rides_out_its_coordinators_trouble(db_url, cache_dir, tmp_path):
    postgres = db_url.startswith("postgresql")
    app = f"fleetfit-chaos-{uuid.uuid4().hex[:8]}"  # names the coordinator's PostgreSQL sessions, to cut them
    with small_disk(tmp_path / "disk") as no_disk:
        disk = tmp_path / ("disk" if no_disk is None else "state-disk")
        disk.mkdir(exist_ok=True)
        url = f"{db_url}&application_name={app}" if postgres else str(disk / "fleet.sqlite3")
        own = db_url if postgres else url  # this test's own sessions are not the coordinator's
        serve = Serve(url, disk / "state", tmp_path / "coordinator.log")
        agents = {}
        try:
            serve.start()
            with Store(own) as store:
                tokens = {d: join_token_text(store, None, {"rack": d[-1]}, 600) for d in DEVICES}
            device_probe.probes(cache_dir)  # once for the session's cache, not by three agents at once
            env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache_dir)}
            for d in DEVICES:
                with open(tmp_path / f"{d}.log", "w") as log:
                    agents[d] = subprocess.Popen(
                        [str(BIN / "fleetfit-agent"), "run", "--coordinator", serve.address, "--insecure",
                         "--device-id", d, "--token", tokens[d], "--identity", str(tmp_path / f"{d}.json")],
                        env=env, stdout=log, stderr=log)
            wait_until(lambda: len(serve.stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) == len(DEVICES),
                       120, "the agents to register", every_s=0.5)

            def alive() -> None:
                running = {d: p.poll() for d, p in agents.items()}
                assert all(code is None for code in running.values()), (running, *[
                    (tmp_path / f"{d}.log").read_text()[-1500:] for d, code in running.items() if code is not None])

            def campaign(quants=QUANTS) -> pb.CreateCampaignResponse:
                spec = pb.CampaignSpec(models=["smollm2-135m"], quants=quants, backends=["llama.cpp"], template=SHORT)
                reply = serve.stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=30)
                assert len(reply.job_ids) == len(DEVICES) * len(quants)  # one job per device and quant
                return reply

            def campaign_when_answered(quants) -> pb.CreateCampaignResponse | None:
                try:
                    return campaign(quants)
                except grpc.RpcError:  # still in trouble: asked again
                    return None

            def stored() -> int:
                alive()
                with Store(own) as store:
                    return store.result_count()

            campaigns = [campaign()]
            wait_until(stored, 180, "a first result", every_s=0.5)
            faults = []

            lock_database(own, LOCK_S)  # every write (and on PostgreSQL every read) waits or fails meanwhile
            faults.append(f"database locked {LOCK_S:g} s")
            campaigns.append(campaign())  # more jobs, so the work goes on through the faults below

            if postgres:
                for _ in range(2):
                    cut = terminate_backends(db_url, app)
                    assert cut, "the coordinator had no PostgreSQL session to terminate"
                    faults.append(f"{cut} PostgreSQL sessions terminated")
                    time.sleep(3)

            if no_disk is None:
                ballast = fill(disk)
                try:  # a write through the coordinator meets the full disk: stored, or UNAVAILABLE (never UNKNOWN)
                    campaigns.append(campaign(QUANTS[:1]))
                    during = "OK"
                except grpc.RpcError as exc:
                    during = exc.code().name
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                time.sleep(8)  # reports, heartbeats and polls meet a full disk
                ballast.unlink()
                faults.append(f"disk full 8 s (a campaign created meanwhile: {during})")
                # the coordinator writes again once the disk has room, without a restart
                campaigns.append(wait_until(lambda: campaign_when_answered(QUANTS[:1]), 30,
                                            "a campaign stored after the disk emptied", every_s=1.0))

            serve.kill()
            time.sleep(3)  # agents meet a coordinator that is not there
            serve.start()
            faults.append("coordinator SIGKILLed and restarted")

            job_ids = [j for c in campaigns for j in c.job_ids]

            def finished():
                alive()
                try:
                    jobs = serve.stub.GetJobs(pb.GetJobsRequest(job_ids=job_ids), timeout=10).jobs
                except grpc.RpcError:  # asked again on the next round
                    return None
                return jobs if all(j.job_state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED) for j in jobs) else None

            jobs = wait_until(finished, 300, "the campaigns to finish", every_s=1.0)
            outboxes = {d: tmp_path / f"{d}-outbox.sqlite3" for d in DEVICES}
            wait_until(lambda: all(outbox_counts(p)["pending"] == 0 for p in outboxes.values()), 60,
                       "the outboxes to empty", every_s=0.5)

            alive()  # every agent still running

            # every job done exactly once: run once by its agent, one result stored for it
            started = [m.group(1) for d in DEVICES for m in JOB_LINE.finditer((tmp_path / f"{d}.log").read_text())]
            assert sorted(started) == sorted(job_ids), "a job was run twice, or not at all"
            assert {j.job_id: pb.JobState.Name(j.job_state) for j in jobs} == {j: "JOB_STATE_DONE" for j in job_ids}, \
                [j.error for j in jobs if j.error]
            with Store(own) as store:
                per_job = dict(store.db.query("SELECT job_id, COUNT(*) FROM results GROUP BY job_id"))
                count = store.result_count()
            assert per_job == {j: 1 for j in job_ids}

            # every measured result stored: none refused, dead-lettered, dropped or lost by an outbox
            counts = {d: outbox_counts(p) for d, p in outboxes.items()}
            kept = {"delivered", "duplicates", "pending"}
            trouble = {d: {k: v for k, v in c.items() if k not in kept and v} for d, c in counts.items()}
            dead = sum(c.get("dead_letters", 0) for c in counts.values())
            sent = sum(c.get("delivered", 0) + c.get("duplicates", 0) for c in counts.values())
            print(f"\nchaos on {'PostgreSQL' if postgres else 'SQLite'} ({'; '.join(faults)}): measured "
                  f"{len(started)}, stored {count}, acknowledged by the outboxes {sent}, dead-lettered {dead}, "
                  f"lost {len(started) - count}")
            assert count == len(started) == sent
            assert dead == 0 and not any(trouble.values()), trouble
        finally:
            stop_processes(*agents.values())
            serve.stop()
    if no_disk is not None:
        pytest.skip(f"everything else held, but the disk-full fault needs a tmpfs mounted as root: {no_disk}")
