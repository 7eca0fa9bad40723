"""Agents and several coordinator replicas on one database (issue 30 item 4): addresses given as A,B or a DNS name
with several records; replicas advertise themselves (the agent learns the set at Register and keeps it); a call that
finds its replica gone moves to the next; and, end to end, two `fleetfit serve` replicas on PostgreSQL, two
`fleetfit-agent run` processes, the replica they use SIGKILLed mid-campaign and left down: every job done once."""

import json
import os
import re
import socket
import subprocess

import grpc
import pytest

from fleetfit.agent import device_probe, failover, identity
from fleetfit.coordinator.service.enrollment import join_token_text
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, stop_processes, wait_until
from tests.test_chaos import JOB_LINE, SHORT, Serve, outbox_counts


def test_an_address_list_is_host_port_entries_in_order_without_repeats():
    assert failover.split("a:1, b:2,a:1,") == ["a:1", "b:2"]
    for bad in ("", "a", "a:x", ":5", "a:70000"):
        with pytest.raises(failover.AddressError):
            failover.split(bad)
    assert failover.well_formed(["a:1", "no-port", 5, "b:2,c:3", "x" * 400 + ":1"]) == ["a:1"]


def test_a_dns_name_with_several_records_counts_as_each_address():
    def resolve(host, port, type=0):  # what getaddrinfo answers for a name with two A records and one AAAA
        assert host == "coordinators.lan"
        return [(socket.AF_INET, type, 6, "", ("10.0.0.1", port)), (socket.AF_INET, type, 6, "", ("10.0.0.2", port)),
                (socket.AF_INET, type, 6, "", ("10.0.0.1", port)), (socket.AF_INET6, type, 6, "", ("fd00::3", port, 0, 0))]

    assert failover.expand("coordinators.lan:50051", resolve) == ["10.0.0.1:50051", "10.0.0.2:50051",
                                                                   "[fd00::3]:50051"]
    assert failover.expand("127.0.0.1:50051") == ["127.0.0.1:50051"]  # a literal address is itself
    assert failover.expand("no-such-host.invalid:1") == ["no-such-host.invalid:1"]  # kept; tried when dialled
    found = identity.Identity("coordinators.lan:50051,10.0.0.9:1", "dev", "s", learned=("10.0.0.2:50051", "b:7"))
    assert failover.addresses(found, resolve) == ["10.0.0.1:50051", "10.0.0.2:50051", "[fd00::3]:50051",
                                                  "10.0.0.9:1", "b:7"]


@pytest.fixture()
def two_replicas(db_url, tmp_path):
    """Two coordinators on one database (as `fleetfit serve` replicas on PostgreSQL), each advertising itself."""
    replicas = [BackgroundCoordinator(db_url, state_dir=tmp_path / "state", advertise=True) for _ in range(2)]
    for replica in replicas:
        replica.start()
    yield replicas
    for replica in replicas:
        if replica.thread.is_alive():
            replica.stop()


def test_the_agent_learns_the_replicas_and_moves_to_the_next_when_its_own_stops(two_replicas, tmp_path):
    first, second = two_replicas
    found = identity.join(first.address, first.join_token(), "dev-f", insecure=True)
    assert sorted(found.learned) == sorted([first.address, second.address])  # advertised at join
    path = tmp_path / "identity.json"
    identity.save(found, path)
    assert identity.load(path).learned == found.learned  # kept with the credentials

    stub = failover.Replicas(identity.Identity(first.address, found.device_id, found.secret), connect_timeout_s=3)
    assert stub.connect() == first.address
    inventory = pb.DeviceInventory(device_id="dev-f", hostname="f")
    reply = stub.Register(pb.RegisterRequest(inventory=inventory), timeout=10)
    assert stub.learn(reply.coordinators) == sorted([first.address, second.address])
    assert stub.learn(reply.coordinators) is None  # unchanged
    identity.remember_replicas(path, list(reply.coordinators))
    assert identity.load(path).learned == tuple(sorted([first.address, second.address]))

    first.stop()  # its replica goes away: the next call moves, once, and is answered by the other
    assert stub.PollJob(pb.PollJobRequest(device_id="dev-f", wait_s=0), timeout=10) == pb.PollJobResponse()
    assert (stub.current, stub.moves) == (second.address, 1)
    stub.close()


def test_a_refusal_is_not_a_reason_to_move(two_replicas):
    first, second = two_replicas
    found = identity.join(first.address, first.join_token(), "dev-r", insecure=True)
    stub = failover.Replicas(identity.Identity(f"{first.address},{second.address}", "dev-r", "wrong-secret"), 3)
    stub.connect()
    with pytest.raises(grpc.RpcError) as refused:
        stub.PollJob(pb.PollJobRequest(device_id=found.device_id, wait_s=0), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (stub.current, stub.moves) == (first.address, 0)
    stub.close()


def test_a_call_racing_another_threads_move_is_answered(two_replicas):
    """The lease keeper and the main loop share the stub: a call that took the stub just before the other thread
    moved is answered — before, the move closed the old channel under it and the call crashed the agent (a
    segmentation fault in grpcio's C core), and a later move closes it."""
    first, second = two_replicas
    found = identity.join(first.address, first.join_token(), "dev-m", insecure=True)
    stub = failover.Replicas(identity.Identity(f"{first.address},{second.address}", "dev-m", found.secret), 3)
    stub.connect()
    stub.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-m", hostname="m")), timeout=10)
    old = stub.stub

    class Racing:  # the other thread moves between this call's read of the stub and its call
        def __getattr__(self, rpc):
            assert stub._move(stub.moves)
            return getattr(old, rpc)

    stub.stub = Racing()
    reply = stub.Heartbeat(pb.HeartbeatRequest(device_id="dev-m"), timeout=10)
    assert reply.lease_s > 0 and (stub.current, stub.moves) == (second.address, 1)
    second.stop()  # the next move (back to the first) closes the channel moved from before
    assert stub.Heartbeat(pb.HeartbeatRequest(device_id="dev-m"), timeout=10).lease_s > 0
    assert (stub.current, stub.moves) == (first.address, 2)
    stub.close()


def test_join_takes_the_first_replica_that_answers(two_replicas):
    first, second = two_replicas
    first.stop()
    found = identity.join(f"{first.address},{second.address}", second.join_token(), "dev-j", insecure=True)
    assert found.coordinator == f"{first.address},{second.address}"  # the whole list is kept
    assert found.learned == (second.address,)  # a replica stopped gracefully withdraws its advertisement


QUANTS = ("Q4_0", "Q8_0", "F16")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_agents_finish_every_job_once_on_another_replica_when_theirs_is_killed(db_url, cache_dir, tmp_path):
    replicas = [Serve(db_url, tmp_path / "state", tmp_path / f"replica-{n}.log") for n in "ab"]
    doomed, other = replicas
    agents = {}
    try:
        for replica in replicas:
            replica.start()
        with Store(db_url) as store:
            tokens = {d: join_token_text(store, None, {}, 600) for d in ("fo-1", "fo-2")}
        device_probe.probes(cache_dir)
        env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache_dir)}
        given = {"fo-1": f"{doomed.address},{other.address}",  # both addresses given
                 "fo-2": doomed.address}  # one given: the other learned from the replicas' advertisement
        for d, addresses in given.items():
            with open(tmp_path / f"{d}.log", "w") as log:
                agents[d] = subprocess.Popen(
                    [str(BIN / "fleetfit-agent"), "run", "--coordinator", addresses, "--insecure", "--device-id", d,
                     "--token", tokens[d], "--identity", str(tmp_path / f"{d}.json")], env=env, stdout=log, stderr=log)

        def learned(d: str) -> list[str]:
            try:
                return json.loads((tmp_path / f"{d}.json").read_text()).get("learned", [])
            except (OSError, ValueError):
                return []

        wait_until(lambda: all(other.address in learned(d) for d in agents), 120, "the agents to learn the replicas",
                   every_s=0.5)
        # both registered through the replica about to die
        wait_until(lambda: all(f"with {doomed.address}" in (tmp_path / f"{d}.log").read_text() for d in agents), 120,
                   "the agents to register", every_s=0.5)

        def alive() -> None:
            running = {d: p.poll() for d, p in agents.items()}
            assert all(code is None for code in running.values()), (running, *[
                (tmp_path / f"{d}.log").read_text()[-1500:] for d, code in running.items() if code is not None])

        spec = pb.CampaignSpec(models=["smollm2-135m"], quants=QUANTS, backends=["llama.cpp"], template=SHORT)
        campaign = doomed.stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=60)
        job_ids = list(campaign.job_ids)
        assert len(job_ids) == len(agents) * len(QUANTS)

        def stored() -> int:
            alive()
            with Store(db_url) as store:
                return store.result_count()

        wait_until(stored, 300, "a first result", every_s=0.3)
        doomed.kill()  # mid-campaign; never restarted
        done_at_kill = stored()
        assert done_at_kill < len(job_ids), "the campaign finished before the replica was killed"

        def finished():
            alive()
            try:
                jobs = other.stub.GetJobs(pb.GetJobsRequest(job_ids=job_ids), timeout=10).jobs
            except grpc.RpcError:
                return None
            return jobs if all(j.job_state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED) for j in jobs) else None

        jobs = wait_until(finished, 400, "the campaign to finish on the other replica", every_s=1.0)
        outboxes = {d: tmp_path / f"{d}-outbox.sqlite3" for d in agents}
        wait_until(lambda: all(outbox_counts(p)["pending"] == 0 for p in outboxes.values()), 60,
                   "the outboxes to empty", every_s=0.5)
        alive()
        assert doomed.proc.poll() is not None  # left down throughout

        logs = {d: (tmp_path / f"{d}.log").read_text() for d in agents}
        started = [m.group(1) for text in logs.values() for m in JOB_LINE.finditer(text)]
        assert sorted(started) == sorted(job_ids), "a job was run twice, or not at all"
        assert {j.job_id: pb.JobState.Name(j.job_state) for j in jobs} == {j: "JOB_STATE_DONE" for j in job_ids}, \
            [j.error for j in jobs if j.error]
        with Store(db_url) as store:
            per_job = dict(store.db.query("SELECT job_id, COUNT(*) FROM results GROUP BY job_id"))
        assert per_job == {j: 1 for j in job_ids}  # no result lost, none duplicated
        counts = {d: outbox_counts(p) for d, p in outboxes.items()}
        assert all(c.get("dead_letters", 0) == 0 and not c.get("rejected") and not c.get("lost")
                   for c in counts.values()), counts
        for d, text in logs.items():
            assert re.search(rf"moved to {re.escape(other.address)}", text), f"{d} never moved: {text[-1500:]}"
        print(f"\nfailover: {len(job_ids)} jobs, {done_at_kill} stored when the replica was killed, the rest on the "
              f"other; per-job results {sorted(set(per_job.values()))}")
    finally:
        stop_processes(*agents.values())
        for replica in replicas:
            replica.stop()
