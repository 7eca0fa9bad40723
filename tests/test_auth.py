"""Enrollment and authentication on a real TLS coordinator: every RPC of the contract (enumerated from the
service descriptors, so a new RPC cannot skip this) refuses unauthenticated callers, agents acting as
another agent, and agents calling operator RPCs; join tokens work once and expire."""

import os
import stat

import grpc
import pytest

from fleetfit.agent import identity
from fleetfit.coordinator.service.auth import AGENT, OPERATOR, policy
from fleetfit.coordinator.service.auth import AGENT_OR_OPERATOR, PUBLIC
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import connect
from tests.conftest import Agents, assert_one_line_error, run_cli

RPCS = [(service, method) for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods]


@pytest.fixture(scope="module")
def tls_coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    server = BackgroundCoordinator(tmp / "fleet.sqlite3", tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def enrolled(tls_coordinator):
    agents = Agents(tls_coordinator)
    for device_id in ("dev-a", "dev-b"):
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id)), timeout=5)
    yield agents
    agents.close()


def call(channel, service, method, request):
    rpc = channel.unary_unary(f"/{service.full_name}/{method.name}", request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=lambda b: b)
    return rpc(request, timeout=5)


def as_device(method, device_id: str):
    """A request of `method`'s type that names `device_id` where the policy looks for the caller."""
    request = pb.DESCRIPTOR.message_types_by_name[method.input_type.name]._concrete_class()
    field = policy(method.full_name)[1] or ("device_id" if "device_id" in request.DESCRIPTOR.fields_by_name else "")
    if field:
        *parents, leaf = field.split(".")
        target = request
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, device_id)
    return request


@pytest.mark.parametrize("service,method", RPCS, ids=[m.full_name for _, m in RPCS])
def test_every_rpc_refuses_callers_that_may_not_call_it(tls_coordinator, enrolled, service, method):
    role = policy(method.full_name)[0]  # KeyError here: a new RPC without a policy
    ca = tls_coordinator.authority.ca_pem
    no_token = connect(tls_coordinator.address, 5, ca_pem=ca)
    wrong = connect(tls_coordinator.address, 5, ca_pem=ca, token="agent.dev-a.not-the-secret")
    operator = connect(tls_coordinator.address, 5, ca_pem=ca, token=tls_coordinator.operator_token)
    wrong_operator = connect(tls_coordinator.address, 5, ca_pem=ca, token="operator.not-the-token")
    refusals = []
    if role in (AGENT, OPERATOR, AGENT_OR_OPERATOR):
        refusals += [(no_token, "dev-a", grpc.StatusCode.UNAUTHENTICATED),
                     (wrong, "dev-a", grpc.StatusCode.UNAUTHENTICATED),
                     (wrong_operator, "dev-a", grpc.StatusCode.UNAUTHENTICATED)]
    if role in (AGENT, AGENT_OR_OPERATOR):  # dev-a's credentials acting as dev-b
        refusals += [(enrolled.channels[0], "dev-b", grpc.StatusCode.PERMISSION_DENIED)]
    if role == AGENT:  # the operator is no agent
        refusals += [(operator, "dev-a", grpc.StatusCode.UNAUTHENTICATED)]
    if role == OPERATOR:  # an agent is no operator
        refusals += [(enrolled.channels[0], "dev-a", grpc.StatusCode.UNAUTHENTICATED)]
    if role == PUBLIC:  # Join: public, but only with a live token
        refusals += [(no_token, "dev-x", grpc.StatusCode.UNAUTHENTICATED)]
    for channel, device_id, code in refusals:
        with pytest.raises(grpc.RpcError) as exc:
            call(channel, service, method, as_device(method, device_id))
        assert exc.value.code() == code, (method.full_name, exc.value.details())
    for channel in (no_token, wrong, operator, wrong_operator):
        channel.close()


def test_join_pins_the_ca_and_keeps_the_credentials_private(tls_coordinator, tmp_path):
    found = identity.join(tls_coordinator.address, tls_coordinator.join_token({"site": "lab"}), "dev-pin")
    assert found.ca_pem.encode() == tls_coordinator.authority.ca_pem
    path = tmp_path / "id" / "agent.json"
    identity.save(found, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and identity.load(path) == found
    assert tls_coordinator.store.device_labels()["dev-pin"] == {"site": "lab"}
    secret = tls_coordinator.join_token().split(".")[0]
    with pytest.raises(identity.JoinError, match="does not present the CA"):
        identity.join(tls_coordinator.address, f"{secret}.{'0' * 64}", "dev-mitm")


def test_mutual_tls_needs_the_client_certificate(tmp_path):
    server = BackgroundCoordinator(tmp_path / "m.sqlite3", tls=True, require_client_cert=True)
    server.start()
    try:
        with pytest.raises(identity.JoinError):  # joining needs no certificate: but mTLS refuses the handshake
            identity.join(server.address, server.join_token(), "dev-m", mutual_tls=True, timeout_s=2)
        # An operator-side enrollment path: the CA issues a client certificate, and the agent then connects.
        cert, key = server.authority.issue_client("dev-m")
        secret = server.store.redeem_join_token(server.join_token().split(".")[0], "dev-m")
        found = identity.Identity(server.address, "dev-m", secret, server.authority.ca_pem.decode(), cert.decode(),
                                  key.decode())
        with found.connect(5) as channel:
            from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc

            pb_grpc.AgentServiceStub(channel).Register(
                pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-m")), timeout=5)
        assert [d.inventory.device_id for d in server.store.devices()] == ["dev-m"]
    finally:
        server.stop()


def test_join_tokens_are_refused_when_reused_or_expired(tls_coordinator):
    token = tls_coordinator.join_token()
    identity.join(tls_coordinator.address, token, "dev-once")
    with pytest.raises(identity.JoinError, match="already used"):
        identity.join(tls_coordinator.address, token, "dev-twice")
    with pytest.raises(identity.JoinError, match="expired"):
        identity.join(tls_coordinator.address, tls_coordinator.join_token(expires_s=-1), "dev-late")


def test_cli_join_and_token_errors_are_one_line(tls_coordinator, tmp_path):
    state = tls_coordinator.state_dir
    token = run_cli("fleetfit", "token", "create", "--db", str(tls_coordinator.db_path), "--state-dir", str(state),
                    "--labels", "site=lab", "--expires", "1h")
    assert token.returncode == 0, token.stderr
    joined = run_cli("fleetfit-agent", "join", "--coordinator", tls_coordinator.address, "--token",
                     token.stdout.strip(), "--device-id", "dev-cli", "--identity", str(tmp_path / "a.json"))
    assert joined.returncode == 0 and "TLS, CA pinned" in joined.stdout, joined.stderr
    assert_one_line_error(run_cli("fleetfit-agent", "join", "--coordinator", tls_coordinator.address, "--token",
                                  token.stdout.strip(), "--identity", str(tmp_path / "b.json")), "already used")
    assert_one_line_error(run_cli("fleetfit", "token", "create", "--expires", "soon", "--db",
                                  str(tmp_path / "x.sqlite3")), "bad duration")
    assert_one_line_error(run_cli("fleetfit", "devices", "--coordinator", tls_coordinator.address,
                                  env={"FLEETFIT_STATE_DIR": str(state), "FLEETFIT_TOKEN": "operator.wrong"}),
                          "refused the operator token")
    listed = run_cli("fleetfit", "devices", "--wide", "--coordinator", tls_coordinator.address,
                     env={"FLEETFIT_STATE_DIR": str(state)})  # --wide: device ids shown
    assert listed.returncode == 0 and "dev-cli" not in listed.stdout  # enrolled, not yet registered
    unit = run_cli("fleetfit-agent", "service", "install", "--dry-run", "--identity", str(tmp_path / "a.json"))
    assert unit.returncode == 0 and f"run --identity {tmp_path / 'a.json'}" in unit.stdout
    assert "RestartPreventExitStatus=2" in unit.stdout  # a refusal on start is not retried every 5 s
