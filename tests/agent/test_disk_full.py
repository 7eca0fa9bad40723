"""A full disk under the outbox: the agent stays up, sends the result it could not keep directly, counts what
it cannot deliver, and keeps serving.

The disk is real: a 256 KiB tmpfs mounted for the test (skipped, saying why, where mounting is not permitted)
filled with a file until the kernel says ENOSPC, so SQLite itself returns SQLITE_FULL; the coordinator is a
real one over gRPC, and the agent the installed `fleetfit-agent run`."""

import errno
import logging
import os
import signal
import subprocess
import threading
import time

import pytest

from fleetfit.agent import identity
from fleetfit.agent.outbox import Outbox, OutboxWriteError, deliver, flush
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.agent.test_outbox import DEVICE, pending_ids, registered, report, stub, unreachable_stub  # noqa: F401
from tests.conftest import BIN, fleet_stub


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory) -> None:
    """Write a file until the filesystem is full (again, when SQLite freed some space)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def free(directory) -> None:
    os.unlink(directory / "filler")


def test_a_write_the_full_disk_refuses_raises_and_counts_wait_in_memory(small_disk):
    box = Outbox(small_disk / "outbox.sqlite3")
    fill(small_disk)
    with pytest.raises(OutboxWriteError, match="database or disk is full"):
        box.put(report("r-1"))
    assert len(box) == 0
    box.note("lost")  # the counter cannot be written either: it waits in memory
    assert box.count("lost") == 1
    free(small_disk)
    box.put(report("r-2"))  # the next write that succeeds saves it
    box.close()
    reopened = Outbox(small_disk / "outbox.sqlite3")
    assert (pending_ids(reopened), reopened.count("lost")) == (["r-2"], 1)
    reopened.close()


def test_a_result_the_full_disk_refuses_is_delivered_directly(small_disk, coordinator, registered, caplog):
    box = Outbox(small_disk / "outbox.sqlite3")
    fill(small_disk)
    with caplog.at_level(logging.INFO, logger="fleetfit.agent"):
        assert deliver(box, registered.ReportResult, report("r-1"), threading.Event())
    assert [r.result_id for r in coordinator.store.results()] == ["r-1"]
    assert len(box) == 0 and box.count("delivered") == 1 and box.count("lost") == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["outbox write failed (database or disk is full): result r-1 delivered directly"], lines
    box.close()


def test_a_result_neither_kept_nor_delivered_is_counted_lost(small_disk, unreachable_stub, caplog):
    box = Outbox(small_disk / "outbox.sqlite3")
    fill(small_disk)
    with caplog.at_level(logging.INFO, logger="fleetfit.agent"):
        assert not deliver(box, unreachable_stub.ReportResult, report("r-1"), threading.Event(), max_attempts=2)
    assert box.count("lost") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "result r-1 lost" in lines[0] and "counted, 1 lost so far" in lines[0], lines
    free(small_disk)
    box.put(report("r-2"))
    box.close()
    assert Outbox(small_disk / "outbox.sqlite3").count("lost") == 1  # saved once the disk had room


def test_a_removal_the_full_disk_refuses_keeps_the_entry_for_a_later_duplicate(small_disk, coordinator, registered):
    box = Outbox(small_disk / "outbox.sqlite3")
    box.put(report("r-1"))
    fill(small_disk)
    assert not flush(box, registered.ReportResult, threading.Event())  # sent, but the delete could not be written
    assert pending_ids(box) == ["r-1"] and coordinator.store.result_count() == 1
    free(small_disk)
    assert flush(box, registered.ReportResult, threading.Event())
    assert len(box) == 0 and box.count("duplicates") == 1 and coordinator.store.result_count() == 1
    box.close()


def test_the_agent_process_stays_up_on_a_full_disk_and_keeps_serving(small_disk, coordinator, tmp_path):
    """`fleetfit-agent run` with its outbox on a full disk: each job's result reaches the coordinator directly,
    one log line says so, the agent serves the next job, and SIGTERM ends it cleanly (no systemd restart)."""
    allowed = tmp_path / "models"
    allowed.mkdir()
    (allowed / "bad.gguf").write_bytes(b"not a model")  # a job that fails fast is still a result to keep
    agent = identity.join(coordinator.address, coordinator.join_token(), "full-disk", insecure=True)
    identity.save(agent, tmp_path / "agent.json")
    log = tmp_path / "agent.log"
    proc = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(tmp_path / "agent.json"),
                             "--outbox", str(small_disk / "outbox.sqlite3"), "--insecure", "--allow-dir", str(allowed),
                             "--cache-dir", str(tmp_path / "cache")], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        fleet = fleet_stub(coordinator)
        deadline = time.monotonic() + 60
        while not fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        # a job that fails fast on the device is still a result to keep: no synthetic IQ2_XS file can be made
        request = pb.ProfileRequest(model=pb.ModelRef(name="distilgpt2"), backend="llama.cpp", quant="IQ2_XS",
                                    n_prompt=16, n_gen=4, repetitions=1, idle_baseline_s=0)
        for n in (1, 2):
            fill(small_disk)
            (job_id,) = fleet.SubmitProfile(pb.SubmitProfileRequest(request=request), timeout=5).job_ids
            while (job := fleet.GetJobs(pb.GetJobsRequest(job_ids=[job_id]), timeout=5).jobs[0]).job_state != pb.JOB_STATE_FAILED:
                assert time.monotonic() < deadline + 60 and proc.poll() is None, log.read_text()
                time.sleep(0.2)
            assert "IQ2_XS" in job.error and "lease" not in job.error  # the agent's own result, not an expired lease
            assert coordinator.store.result_count() == n
        while len(lines := [x for x in log.read_text().splitlines() if "outbox write failed" in x]) < 2:
            assert time.monotonic() < deadline + 60, log.read_text()  # logged just after the result was sent
            time.sleep(0.1)
        assert len(lines) == 2 and all("(database or disk is full)" in x and "delivered directly" in x for x in lines), log.read_text()
        assert proc.poll() is None and "Traceback" not in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
