"""A locked or slow database does not stall unrelated RPCs: store calls run off the event loop, each thread on its
own connection (real coordinator, real SQLite, real gRPC)."""

import sqlite3
import threading
import time

from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, fleet_stub


def test_reads_and_heartbeats_answer_while_another_process_holds_the_write_lock(coordinator):
    agents = Agents(coordinator)
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-1", hostname="box")), timeout=5)
    fleet = fleet_stub(coordinator)
    assert len(fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) == 1  # warm: credentials proven

    holder = sqlite3.connect(coordinator.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
    writes_done = threading.Event()

    def write_blocked_behind_the_lock():  # a write of this coordinator waits for the lock (busy_timeout)
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-1", hostname="box2")),
                        timeout=30)
        writes_done.set()

    writer = threading.Thread(target=write_blocked_behind_the_lock)
    writer.start()
    try:
        time.sleep(0.3)  # the write is now waiting inside the coordinator
        assert not writes_done.is_set()
        devices = fleet.ListDevices(pb.ListDevicesRequest(), timeout=2).devices  # answers while the lock is held
        assert [d.inventory.hostname for d in devices] == ["box"]
        assert fleet.GetJobs(pb.GetJobsRequest(job_ids=["nope"]), timeout=2).jobs == []
        assert not writes_done.is_set()  # all of that happened while the write still waited
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    writer.join(timeout=30)
    assert writes_done.is_set()
    assert [d.inventory.hostname for d in fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices] == ["box2"]
    agents.close()
