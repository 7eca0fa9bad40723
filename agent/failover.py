"""The coordinator replicas an agent talks to, and moving to the next when the one in use stops answering.

An agent is given one address or several (`--coordinator A,B`; a DNS name with several records counts as each of
its addresses) and learns the rest from the replicas themselves: each Register reply lists the replicas that
advertise themselves in the shared database (`fleetfit serve --advertise`), kept in the identity file
(Identity.learned). One channel is open at a time. A call that finds its replica gone (UNAVAILABLE, or no answer in
its time) is made again, once, on the next replica that answers; if none does, the caller sees the failure and
retries as before. Nothing else changes on a move: every replica shares the database, so a job's lease (renewed by
heartbeats, fenced) holds across the move and a result sent twice is stored once (the outbox; ingest by result id).
"""

import dataclasses
import ipaddress
import logging
import socket
import threading

import grpc

from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import CoordinatorUnreachable

log = logging.getLogger("fleetfit.agent")

# What says the replica in use is gone, not that it refused this call.
GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
MAX_ADDRESSES = 32  # a list learned from replicas is bounded like any input


class AddressError(ValueError):
    """An address list that cannot be used; one line for users."""


def split(text: str) -> list[str]:
    """HOST:PORT entries of a comma-separated list, in order, without repeats; AddressError for a malformed one."""
    found = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AddressError(f"coordinator address {part[:80]!r} is not HOST:PORT")
        if part not in found:
            found.append(part)
    if not found:
        raise AddressError("no coordinator address given (HOST:PORT, or several: A:PORT,B:PORT)")
    return found


def expand(address: str, resolve=socket.getaddrinfo) -> list[str]:
    """`address`, or each of its addresses when its host is a DNS name with several records (in the resolver's
    order): a name that resolves to one address, a literal IP, or a name that does not resolve now stays as given."""
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return [address]
    except ValueError:
        pass
    try:
        infos = resolve(bare, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [address]
    ips = []
    for *_, sockaddr in infos:
        ip = sockaddr[0]
        if ip not in ips:
            ips.append(ip)
    if len(ips) < 2:
        return [address]
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


def well_formed(advertised) -> list[str]:
    """The HOST:PORT entries of a list a coordinator sent (untrusted): malformed ones dropped, at most
    MAX_ADDRESSES."""
    found = []
    for address in list(advertised)[:MAX_ADDRESSES]:
        try:
            if isinstance(address, str) and len(address) <= 300 and split(address) == [address]:
                found.append(address)
        except AddressError:
            pass
    return found


def addresses(identity, resolve=socket.getaddrinfo) -> list[str]:
    """Every replica to try, in order: the addresses given (each DNS name expanded), then those learned."""
    found = []
    for address in [a for given in split(identity.coordinator) for a in expand(given, resolve)] + \
            list(identity.learned):
        if address not in found:
            found.append(address)
    return found[:MAX_ADDRESSES]


class Replicas:
    """A stub for AgentService (`replicas.PollJob(request, timeout=...)`) over whichever replica answers. Thread
    safe: the lease keeper and the main loop share it; a move made by one is seen by the other."""

    def __init__(self, identity, connect_timeout_s: float = 10.0, resolve=socket.getaddrinfo):
        self.identity, self.connect_timeout_s, self.resolve = identity, connect_timeout_s, resolve
        self.addresses = addresses(identity, resolve)
        self.lock = threading.Lock()
        self.channel, self.stub, self.current, self.moves = None, None, None, 0
        # The channel moved from stays open until the next move: another thread may have taken its stub just before
        # (a call on a closed channel crashes the process in grpcio's C core); a call on it meets its replica gone
        # and moves like any other.
        self.retired = None

    def connect(self, start: int = 0, skip: str | None = None) -> str:
        """Open a channel to the first replica (from `start`, round the list) that answers, other than `skip`;
        CoordinatorUnreachable (naming each) when none does."""
        why = []
        n = len(self.addresses)
        for i in range(n):
            address = self.addresses[(start + i) % n]
            if address == skip:
                continue
            try:
                channel = self.identity.connect(self.connect_timeout_s if skip is None else
                                                min(self.connect_timeout_s, 5.0), address=address)
            except CoordinatorUnreachable as exc:
                why.append(str(exc))
                continue
            old, self.channel, self.current = self.channel, channel, address
            self.stub = pb_grpc.AgentServiceStub(channel)
            if self.retired is not None:
                self.retired.close()
            self.retired = old
            return address
        raise CoordinatorUnreachable("; ".join(why) if len(why) < 2 else
                                     f"none of the {len(why)} coordinator replicas answers ({why[0]}; ...)")

    def _move(self, seen: int) -> bool:
        """Move to the next replica that answers, unless another thread moved since `seen`; False when no other
        replica answers (the channel in use stays: gRPC reconnects it when its replica returns)."""
        with self.lock:
            if self.moves != seen:
                return True
            if len(self.addresses) < 2:
                return False
            gone = self.current
            try:
                self.connect(self.addresses.index(gone) + 1 if gone in self.addresses else 0, skip=gone)
            except CoordinatorUnreachable:
                return False
            self.moves += 1
        log.warning("coordinator %s stopped answering; moved to %s", gone, self.current)
        return True

    def learn(self, advertised) -> list[str] | None:
        """Take the replicas a coordinator advertised as the learned ones; the new list when it changed, else None."""
        found = well_formed(advertised)
        if found == list(self.identity.learned):
            return None
        with self.lock:
            self.identity = dataclasses.replace(self.identity, learned=tuple(found))
            self.addresses = addresses(self.identity, self.resolve)
            if self.current and self.current not in self.addresses:
                self.addresses.append(self.current)
        return found

    def __getattr__(self, rpc: str):
        if rpc.startswith("_"):
            raise AttributeError(rpc)

        def call(request, **kwargs):
            with self.lock:
                stub, seen = self.stub, self.moves
            try:
                return getattr(stub, rpc)(request, **kwargs)
            except grpc.RpcError as exc:
                if exc.code() not in GONE or not self._move(seen):
                    raise
            return getattr(self.stub, rpc)(request, **kwargs)

        return call

    def close(self) -> None:
        for channel in (self.channel, self.retired):
            if channel is not None:
                channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

