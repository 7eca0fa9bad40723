"""Enrollment: a join token cannot take over an enrolled device; re-enrolling and revoking are explicit operator
actions (`fleetfit token create --device ID`, `fleetfit device revoke ID`). Store-level on SQLite and PostgreSQL,
and end to end against the real coordinator with the agent's own join code."""

import grpc
import pytest

from fleetfit.agent import identity
from fleetfit.coordinator.service.store import AlreadyEnrolled, BadToken, Store, UnknownDevice, token_hash
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect
from tests.conftest import assert_one_line_error, fleet_stub, run_cli


def test_a_fresh_token_cannot_claim_an_enrolled_device_and_stays_unspent(db_url):
    with Store(db_url) as store:
        secret = store.redeem_join_token(store.create_join_token({"site": "lab"}, 600), "board-1")
        fresh = store.create_join_token({"site": "attacker"}, 600)
        with pytest.raises(AlreadyEnrolled, match="token create --device board-1"):
            store.redeem_join_token(fresh, "board-1")
        assert store.agent_secret_hash("board-1") == token_hash(secret)  # the real agent keeps its credential
        assert store.device_labels()["board-1"] == {"site": "lab"}
        store.redeem_join_token(fresh, "board-2")  # the refused join did not spend the token


def test_a_bound_token_is_for_its_device_only_and_re_enrolls_it(db_url):
    with Store(db_url) as store:
        old = store.redeem_join_token(store.create_join_token({"site": "lab"}, 600), "board-1")
        bound = store.create_join_token({}, 600, device_id="board-1")
        with pytest.raises(BadToken, match="this join token is for device 'board-1'"):
            store.redeem_join_token(bound, "board-2")
        new = store.redeem_join_token(bound, "board-1")
        assert store.agent_secret_hash("board-1") == token_hash(new) != token_hash(old)
        assert store.device_labels()["board-1"] == {"site": "lab"}  # no new labels given: its own are kept
        with pytest.raises(BadToken, match="already used"):
            store.redeem_join_token(bound, "board-1")
        fresh_id = store.redeem_join_token(store.create_join_token({}, 600, device_id="board-3"), "board-3")
        assert store.agent_secret_hash("board-3") == token_hash(fresh_id)  # binding a new id works too


def test_revoke_stops_the_credential_until_a_bound_token_re_enrolls(db_url):
    with Store(db_url) as store:
        store.redeem_join_token(store.create_join_token({}, 600), "board-1")
        store.revoke_agent("board-1")
        assert store.agent_secret_hash("board-1") is None
        with pytest.raises(AlreadyEnrolled):  # revoked is still enrolled: a plain token cannot take the id
            store.redeem_join_token(store.create_join_token({}, 600), "board-1")
        again = store.redeem_join_token(store.create_join_token({}, 600, device_id="board-1"), "board-1")
        assert store.agent_secret_hash("board-1") == token_hash(again)
        with pytest.raises(UnknownDevice):
            store.revoke_agent("never-enrolled")


def agent_stub(ident: identity.Identity):
    channel = ident.connect(5)
    return channel, pb_grpc.AgentServiceStub(channel)


def register(stub, device_id: str) -> None:
    stub.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id, hostname="board")), timeout=5)


def test_end_to_end_takeover_refused_revoke_and_re_enroll(coordinator):
    env = {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": coordinator.address}
    real = identity.join(coordinator.address, coordinator.join_token({"site": "lab"}), "board-aaaa", insecure=True)
    other = identity.join(coordinator.address, coordinator.join_token(), "board-bbbb", insecure=True)  # same hostname
    channels = []
    try:
        (c1, real_stub), (c2, other_stub) = agent_stub(real), agent_stub(other)
        channels += [c1, c2]
        register(real_stub, "board-aaaa")
        register(other_stub, "board-bbbb")

        with pytest.raises(identity.JoinError, match="device 'board-aaaa' is already enrolled"):
            identity.join(coordinator.address, coordinator.join_token({"site": "evil"}), "board-aaaa", insecure=True)
        fleet = fleet_stub(coordinator)
        job_id = fleet.SubmitProfile(pb.SubmitProfileRequest(device_ids=["board-aaaa"], request=pb.ProfileRequest(
            model=pb.ModelRef(name="smollm2-135m"), n_prompt=16, n_gen=4, repetitions=1)), timeout=5).job_ids[0]
        job = real_stub.PollJob(pb.PollJobRequest(device_id="board-aaaa", wait_s=2), timeout=5).job
        assert job.job_id == job_id  # the real agent keeps working
        real_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-aaaa", job_id=job_id, fence=job.fence), timeout=5)
        labels = {d.inventory.device_id: dict(d.labels) for d in fleet.ListDevices(pb.ListDevicesRequest()).devices}
        assert labels["board-aaaa"] == {"site": "lab"}

        revoked = run_cli("fleetfit", "device", "revoke", "board-aaaa", env=env, timeout=60)
        assert revoked.returncode == 0 and "revoked board-aaaa" in revoked.stdout, revoked.stderr
        with pytest.raises(grpc.RpcError) as err:  # at once, though the credential was proven a moment ago
            real_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-aaaa"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        other_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-bbbb"), timeout=5)  # the other device is untouched

        made = run_cli("fleetfit", "token", "create", "--device", "board-aaaa", "--db", str(coordinator.db_path),
                       "--state-dir", str(coordinator.state_dir), env=env, timeout=60)
        assert made.returncode == 0, made.stderr
        reinstalled = identity.join(coordinator.address, made.stdout.strip(), "board-aaaa", insecure=True)
        c3, new_stub = agent_stub(reinstalled)
        channels.append(c3)
        new_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-aaaa"), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            real_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-aaaa"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        second = run_cli("fleetfit", "token", "create", "--device", "board-aaaa", "--db", str(coordinator.db_path),
                         "--state-dir", str(coordinator.state_dir), env=env, timeout=60).stdout.strip()
        with pytest.raises(identity.JoinError, match="this join token is for device 'board-aaaa'"):
            identity.join(coordinator.address, second, "board-bbbb", insecure=True)
        other_stub.Heartbeat(pb.HeartbeatRequest(device_id="board-bbbb"), timeout=5)

        assert_one_line_error(run_cli("fleetfit", "device", "revoke", "ghost", env=env, timeout=60),
                              "NOT_FOUND: no enrolled device 'ghost'")
    finally:
        for channel in channels:
            channel.close()


def test_join_refuses_a_device_id_with_control_characters(coordinator):
    with pytest.raises(identity.JoinError, match="must be 1 to 256 printable characters"):
        identity.join(coordinator.address, coordinator.join_token(), "board\x1b[2J", insecure=True)


NOT_ASCII = ["café-box", "board\u200b1", "ボード", "board\u00a01", "dev\U0001f600", "x" * 257, "two words", ""]


@pytest.mark.parametrize("device_id", NOT_ASCII)
def test_a_device_id_that_could_never_authenticate_is_refused_at_join(coordinator, device_id):
    """gRPC metadata is ASCII, so an id beyond printable ASCII could join but never make a call: the agent refuses
    it before contacting anyone (one line), and the coordinator refuses it at Join (the token stays unspent)."""
    token = coordinator.join_token()
    with pytest.raises(identity.JoinError, match="printable characters, ASCII without spaces") as err:
        identity.join("127.0.0.1:1", token, device_id, insecure=True)  # nothing listens there: not contacted
    assert "\n" not in str(err.value)
    with connect(coordinator.address, 5) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.AgentServiceStub(channel).Join(pb.JoinRequest(token=token, device_id=device_id), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert identity.join(coordinator.address, token, "board-ascii-1", insecure=True).device_id == "board-ascii-1"


@pytest.mark.parametrize("hostname", ["café", "two words", "ボード", "tab\there", "\u200b"])
def test_the_default_device_id_can_authenticate_whatever_the_hostname(monkeypatch, hostname):
    import socket

    from fleetfit.agent import inventory
    from fleetfit.v1.transport import device_id_problem

    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert device_id_problem(inventory.default_device_id()) is None
