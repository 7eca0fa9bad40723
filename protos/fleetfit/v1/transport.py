"""Transport settings both sides must agree on (message limits, keepalive), and connecting to a coordinator.

Hand-written beside the generated code because it is part of the contract, not of either side.
"""

import hashlib
import pathlib
import re
import socket
import ssl

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A unary call's deadline (registering, a heartbeat, a result, a query); a long poll waits its own wait on top.
CALL_TIMEOUT_S = 15.0
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
# A connection that has not finished its TLS (or HTTP/2) handshake by then is closed: a real client finishes in a
# few round trips, and one that stalls holds a file descriptor (gRPC's default waits 120 s).
HANDSHAKE_TIMEOUT_MS = 10_000
# A connection without a call for this long is closed (agents always have one: a long poll or a heartbeat).
MAX_CONNECTION_IDLE_MS = 300_000
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    # Accept the clients' keepalive pings at the rate they send them.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
]


# The name in the coordinator's server certificate. Agents pin the fleet's own CA, so they ask for this
# name whatever address they dial (an IP, a NAT'd host name) instead of needing it in the certificate.
SERVER_NAME = "fleetfit-coordinator"


class CoordinatorUnreachable(Exception):
    """The coordinator address does not answer."""


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds "authorization: Bearer <token>" to every call (TLS or loopback plaintext alike), streamed answers too."""

    def __init__(self, token: str):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, details, request):
        metadata = tuple(details.metadata or ()) + self.metadata
        return continuation(details._replace(metadata=metadata), request)

    intercept_unary_stream = intercept_unary_unary


def _why_not_ready(address: str, timeout_s: float, ca_pem: bytes | None) -> str:
    """One line saying what to fix: nothing listens there, it listens but speaks the other protocol or another CA's
    TLS, or it accepts connections but does not complete a handshake (overloaded, or at its connection limit)."""
    host, _, port = address.rpartition(":")
    wait = min(timeout_s, 5.0)
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=wait)
    except (OSError, ValueError):
        return (f"coordinator at {address} does not answer (waited {timeout_s:g} s): is `fleetfit serve` running "
                "there, and are the host and port right?")
    busy = (f"coordinator at {address} accepts connections but did not complete a handshake within {wait:g} s: it "
            "is overloaded or at its connection limit; try again shortly")
    if ca_pem is None:
        sock.close()
        return (f"coordinator at {address} answers, but not in plaintext: it serves TLS (give its CA with --ca or "
                "--state-dir instead of --insecure), or it is overloaded and did not answer in time")
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    context.check_hostname = False  # the certificate names SERVER_NAME; the CA is what is checked here
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(sock, server_hostname=SERVER_NAME):
            return busy  # the TLS handshake completes: the server did not take the channel in time
    except ssl.SSLCertVerificationError:
        return (f"coordinator at {address} answers, but TLS with it fails: the CA given is not the one that signed "
                "its certificate (use that coordinator's tls/ca.pem: --ca, or --state-dir)")
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, TimeoutError, socket.timeout):
        return busy  # closed or silent mid-handshake: what a server at its limit does
    except (ssl.SSLError, OSError):
        return (f"coordinator at {address} answers, but TLS with it fails: it serves plaintext (--insecure), or the "
                "CA given is not the one that signed its certificate (use that coordinator's tls/ca.pem)")
    finally:
        sock.close()


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
        raise CoordinatorUnreachable(_why_not_ready(address, timeout_s, ca_pem)) from None
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


def default_device_id() -> str:
    """A device's default id, stable per machine (the agent's, and the one quickstart enrolls its agent as):
    hostname plus a digest of /etc/machine-id when there is one; a character of the hostname that a credential
    cannot carry (non-ASCII, space: DEVICE_ID) becomes "_"."""
    host = re.sub(r"[^!-~]", "_", socket.gethostname())[:200] or "device"
    try:
        machine_id = pathlib.Path("/etc/machine-id").read_text().strip()
    except OSError:
        return host
    return f"{host}-{hashlib.sha256(machine_id.encode()).hexdigest()[:8]}"
