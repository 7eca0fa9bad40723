"""The agent's identity: joining a fleet once with a join token, and the credentials kept afterwards.

A join token from `fleetfit token create` reads `SECRET.FINGERPRINT`: the one-time secret and the SHA-256
of the fleet CA's certificate. At join the agent reads the certificate chain the coordinator presents,
keeps the CA whose fingerprint matches (else refuses: a man in the middle cannot pass) and from then on
trusts only that CA. The credentials are written with mode 0600.

`coordinator` is the address given at join: one HOST:PORT, or several comma-separated (replicas on one database);
`learned` holds the replicas the coordinators advertised since (agent/failover.py moves between them).
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import socket
import ssl

import grpc

from fleetfit.agent.failover import AddressError, addresses, expand, split, well_formed
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import CALL_TIMEOUT_S, CoordinatorUnreachable, connect, device_id_problem


class JoinError(Exception):
    """Joining failed; the message is one line for users."""


class Unreachable(JoinError):
    """This replica does not answer, or fails for now (the next may; later, this one may): `run --token` tries again."""


# What a coordinator answers a join with when it will not enroll this device as asked, however often it is asked: a
# token unknown, spent or expired (UNAUTHENTICATED), an id enrolled already (ALREADY_EXISTS), a bad id, no TLS for a
# client certificate. Anything else (UNAVAILABLE: its database locked or away; INTERNAL, ...) is its trouble for now.
JOIN_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNIMPLEMENTED}


@dataclasses.dataclass(frozen=True)
class Identity:
    coordinator: str
    device_id: str
    secret: str
    ca_pem: str | None = None            # None: plaintext (--insecure, loopback development)
    client_cert_pem: str | None = None   # mutual TLS
    client_key_pem: str | None = None
    learned: tuple[str, ...] = ()        # replicas the coordinators advertised (RegisterResponse.coordinators)

    @property
    def token(self) -> str:
        return f"agent.{self.device_id}.{self.secret}"

    def connect(self, timeout_s: float = 10.0, address: str | None = None) -> grpc.Channel:
        """A channel to `address`, or to the first of this device's coordinator replicas that answers."""
        cert = (self.client_cert_pem.encode(), self.client_key_pem.encode()) if self.client_cert_pem else None
        if address is None:
            unreachable = None
            for replica in addresses(self):
                try:
                    return self.connect(timeout_s, replica)
                except CoordinatorUnreachable as exc:
                    unreachable = unreachable or exc
            raise unreachable
        return connect(address, timeout_s, token=self.token,
                       ca_pem=self.ca_pem.encode() if self.ca_pem else None, client_cert=cert)


def default_path() -> pathlib.Path:
    if path := os.environ.get("FLEETFIT_IDENTITY"):
        return pathlib.Path(path)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return pathlib.Path(config) / "fleetfit" / "agent-identity.json"


def save(identity: Identity, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(identity), f, indent=2)
    os.replace(tmp, path)


def load(path: pathlib.Path) -> Identity | None:
    """The saved credentials, None when there are none, JoinError (one line, quoting nothing of the file) when
    the file is unreadable, truncated or overwritten."""
    if not path.exists():
        return None
    if not path.is_file():  # a FIFO would block the read
        raise JoinError(f"identity {path} is not a regular file; move it aside and join again")
    try:
        found = Identity(**json.loads(path.read_bytes()))
        if not all(isinstance(getattr(found, f), str) for f in ("coordinator", "device_id", "secret")):
            raise TypeError("a field is not a string")
        if not isinstance(found.learned, (list, tuple)) or not all(isinstance(a, str) for a in found.learned):
            raise TypeError("learned is not a list of addresses")
        found = dataclasses.replace(found, learned=tuple(found.learned))
    except OSError as exc:
        raise JoinError(f"cannot read identity {path} ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:  # json and UnicodeDecodeError are ValueErrors
        why = "not JSON" if isinstance(exc, ValueError) else "not an agent identity"
        raise JoinError(f"identity {path} is corrupt ({why}); restore it, or move it aside and join again "
                        f"(an operator may have to re-enroll this device)") from None
    return found


def _no_fingerprint(address: str, timeout_s: float) -> str:
    """What to do about a token without a CA fingerprint: a plaintext coordinator's token (join with --insecure)
    only if the coordinator answers in plaintext; otherwise the token was cut short or mistyped."""
    try:
        connect(address, min(timeout_s, 5.0)).close()
    except CoordinatorUnreachable:
        return ("this join token has no CA fingerprint (a whole token looks like SECRET.FINGERPRINT): copy the "
                f"whole line `fleetfit token create` printed; the coordinator at {address} does not speak plaintext")
    return f"this join token pins no CA and the coordinator at {address} runs plaintext: join with --insecure"


def fetch_pinned_ca(address: str, fingerprint: str, timeout_s: float = 10.0) -> bytes:
    """The CA certificate (PEM) in the chain the coordinator presents whose SHA-256 is `fingerprint`."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # checked by fingerprint below
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw:
            with context.wrap_socket(raw) as tls:
                if hasattr(tls, "get_unverified_chain"):  # Python 3.13+
                    chain = tls.get_unverified_chain()
                else:
                    chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in tls._sslobj.get_unverified_chain()]
    except ConnectionRefusedError:  # a coordinator not started yet, or restarting: the next replica may answer
        raise Unreachable(f"nothing listens at {address} (connection refused): is `fleetfit serve` running there, "
                          "and are the host and port right?") from None
    except ssl.SSLError:
        raise JoinError(f"the coordinator at {address} does not speak TLS: it runs plaintext (--insecure); join it "
                        "with --insecure and a token of that coordinator") from None
    except (OSError, ValueError) as exc:
        raise Unreachable(f"cannot open TLS to {address}: {getattr(exc, 'strerror', None) or exc} (is `fleetfit serve` "
                          "running there, and are the host and port right?)") from None
    for der in chain:
        if hashlib.sha256(der).hexdigest() == fingerprint:
            return ssl.DER_cert_to_PEM_cert(der).encode()
    raise JoinError(f"the coordinator at {address} does not present the CA this token pins "
                    f"(sha256 {fingerprint[:16]}...): the token was mistyped or cut short, the address is wrong, "
                    f"or someone is in between")


def remember_replicas(path: pathlib.Path, learned: list[str]) -> None:
    """Keep the replicas the coordinators advertised in the identity file (its other fields as they are)."""
    found = load(path)
    if found is not None and list(found.learned) != list(learned):
        save(dataclasses.replace(found, learned=tuple(learned)), path)


def join(address: str, token: str, device_id: str, insecure: bool = False, mutual_tls: bool = False,
         timeout_s: float = 10.0) -> Identity:
    """Spend `token` at the coordinator for this device's credentials (an id that could never authenticate is
    refused here, before the coordinator is contacted). `address` may name several replicas (A,B, or a DNS name
    with several records): the first that answers is joined; one that refuses ends the join."""
    if problem := device_id_problem(device_id):
        raise JoinError(f"cannot join as this device: {problem}; choose another with --device-id")
    try:
        replicas = [a for given in split(address) for a in expand(given)]
    except AddressError as exc:
        raise JoinError(str(exc)) from None
    unreachable = []
    for replica in replicas:
        try:
            found = _join_one(replica, token, device_id, insecure, mutual_tls, timeout_s)
        except Unreachable as exc:
            unreachable.append(str(exc))
            continue
        return dataclasses.replace(found, coordinator=address)
    raise Unreachable(unreachable[0] if len(unreachable) == 1 else
                      f"none of the {len(unreachable)} coordinator replicas answers: {'; '.join(unreachable)}")


def _join_one(address: str, token: str, device_id: str, insecure: bool, mutual_tls: bool,
              timeout_s: float) -> Identity:
    secret, _, fingerprint = token.partition(".")
    if insecure:
        ca_pem = None
    elif not fingerprint:
        raise JoinError(_no_fingerprint(address, timeout_s))
    else:
        ca_pem = fetch_pinned_ca(address, fingerprint, timeout_s)
    try:
        channel = connect(address, timeout_s, ca_pem=ca_pem)
    except CoordinatorUnreachable as exc:
        text = str(exc)
        if insecure and "not in plaintext" in text:  # join has no --ca or --state-dir: its token pins the CA
            text = (f"coordinator at {address} answers, but not in plaintext: it serves TLS; join without --insecure "
                    "(the token `fleetfit token create` printed pins its CA)")
        hint = " (a coordinator with --mtls enrolls agents out of band)" if ca_pem else ""
        raise Unreachable(f"{text}{hint}") from None
    with channel:
        try:
            reply = pb_grpc.AgentServiceStub(channel).Join(
                pb.JoinRequest(token=secret, device_id=device_id, want_client_certificate=mutual_tls),
                timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() not in JOIN_REFUSED:
                raise Unreachable(f"the coordinator at {address} failed to enroll {device_id} "
                                  f"({exc.code().name}: {(exc.details() or '').strip()[:200]})") from None
            raise JoinError(f"the coordinator refused to enroll {device_id}: {exc.details()}") from None
    return Identity(address, reply.device_id, reply.secret, ca_pem.decode() if ca_pem else None,
                    reply.client_certificate_pem.decode() or None, reply.client_key_pem.decode() or None,
                    learned=tuple(well_formed(reply.coordinators)))
