"""Transport settings both sides must agree on (message limits, keepalive), and connecting to a coordinator.

Hand-written beside the generated code because it is part of the contract, not of either side.
"""

import re
import socket

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # A client reconnects within seconds of a coordinator's return (gRPC's default backoff reaches 120 s).
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    # Accept the clients' keepalive pings at the rate they send them.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
]


# The name in the coordinator's server certificate. Agents pin the fleet's own CA, so they ask for this
# name whatever address they dial (an IP, a NAT'd host name) instead of needing it in the certificate.
SERVER_NAME = "fleetfit-coordinator"


class CoordinatorUnreachable(Exception):
    """The coordinator address does not answer."""


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Adds "authorization: Bearer <token>" to every call (TLS or loopback plaintext alike)."""

    def __init__(self, token: str):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):
        metadata = tuple(details.metadata or ()) + self.metadata
        return continuation(details._replace(metadata=metadata), request)


def _why_not_ready(address: str, timeout_s: float, tls: bool) -> str:
    """One line saying what to fix: nothing listens there, or it listens but the TLS or plaintext handshake fails."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout_s, 3.0)).close()
    except (OSError, ValueError):
        return (f"coordinator at {address} does not answer (waited {timeout_s:g} s): is `fleetfit serve` running "
                "there, and are the host and port right?")
    if tls:
        return (f"coordinator at {address} answers, but TLS with it fails: the CA given is not the one that signed "
                "its certificate (use that coordinator's tls/ca.pem: --ca, or --state-dir), or it serves plaintext "
                "(--insecure)")
    return (f"coordinator at {address} answers, but not in plaintext: it serves TLS (give its CA with --ca or "
            "--state-dir instead of --insecure)")


def connect(address: str, timeout_s: float = 10.0, *, ca_pem: bytes | None = None, token: str | None = None,
            client_cert: tuple[bytes, bytes] | None = None) -> grpc.Channel:
    """A ready channel to `address`, or CoordinatorUnreachable after `timeout_s`.

    With `ca_pem`, TLS checked against that CA (and, with `client_cert` = (cert, key), mutual TLS);
    without, plaintext (loopback development). With `token`, every call carries it.
    """
    if ca_pem is None:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        key, cert = (client_cert[1], client_cert[0]) if client_cert else (None, None)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(address, credentials,
                                      options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", SERVER_NAME)])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise CoordinatorUnreachable(_why_not_ready(address, timeout_s, tls=ca_pem is not None)) from None
    if token:
        return grpc.intercept_channel(channel, _Bearer(token))  # closing it closes `channel`
    return channel


# A device id travels in every call's credential ("authorization: Bearer agent.<id>.<secret>") and gRPC metadata is
# printable ASCII: an id with anything else could join but never authenticate. 1-256 of "!" to "~", no spaces.
DEVICE_ID = re.compile(r"[!-~]{1,256}")


def device_id_problem(device_id: str) -> str | None:
    """Why `device_id` cannot be a device's id (one line), or None."""
    if DEVICE_ID.fullmatch(device_id):
        return None
    return (f"device_id {device_id[:40]!r} must be 1 to 256 printable characters, ASCII without spaces (it is "
            "sent in each call's credential, and gRPC metadata is ASCII)")
