"""Credentials the coordinator hands out: the operator token kept in the state directory, and join tokens."""

import os
import pathlib

from fleetfit.coordinator import pki
from fleetfit.coordinator.store import Store


def operator_token(store: Store, state_dir: pathlib.Path) -> str:
    """The operator token kept (mode 0600) in `state_dir/operator.token`, made on first start."""
    path = state_dir / "operator.token"
    if path.exists():
        token = path.read_text().strip()
        if store.is_operator_token(token.removeprefix("operator.")):
            return token
    token = "operator." + store.add_operator_token()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def join_token_text(store: Store, authority: pki.Authority | None, labels: dict[str, str], expires_s: float) -> str:
    """A join token as the operator hands it out: the secret, then (with TLS) the CA's fingerprint to pin."""
    secret = store.create_join_token(labels, expires_s)
    return f"{secret}.{authority.fingerprint}" if authority else secret
