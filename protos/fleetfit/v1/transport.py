"""Transport settings both sides must agree on (message limits, keepalive), and connecting to a coordinator.

Hand-written beside the generated code because it is part of the contract, not of either side.
"""

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
]
SERVER_OPTIONS = [
    *CHANNEL_OPTIONS,
    # Accept the clients' keepalive pings at the rate they send them.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
]


class CoordinatorUnreachable(Exception):
    """The coordinator address does not answer."""


def connect(address: str, timeout_s: float = 10.0) -> grpc.Channel:
    """A ready channel to `address`, or CoordinatorUnreachable after `timeout_s`."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        channel.close()
        raise CoordinatorUnreachable(f"coordinator at {address} does not answer (waited {timeout_s:g} s)") from None
    return channel
