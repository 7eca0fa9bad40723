"""Credentials the coordinator hands out: the operator token kept in the state directory, and join tokens."""

import os
import pathlib

from fleetfit.coordinator.service import pki
from fleetfit.coordinator.service.store import Store


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


def fleet_state_without_database(store: Store, state_dir: pathlib.Path) -> str | None:
    """Why starting on this database would silently begin a new fleet, or None: it holds no operator token while
    the state directory has one (or a CA) that the operator and enrolled agents trust — a database that is new,
    emptied or replaced beside an existing fleet's state."""
    kept = [name for name in ("operator.token", "tls/ca.pem") if (state_dir / name).exists()]
    if kept and not store.has_operator_tokens():
        return f"holds no fleet, but {state_dir} has the {' and '.join(kept)} of one"
    return None


def join_token_text(store: Store, authority: pki.Authority | None, labels: dict[str, str], expires_s: float,
                    device_id: str | None = None) -> str:
    """A join token as the operator hands it out: the secret, then (with TLS) the CA's fingerprint to pin. With
    `device_id`, only that device may spend it (and re-enrolls it when it is enrolled)."""
    secret = store.create_join_token(labels, expires_s, device_id)
    return f"{secret}.{authority.fingerprint}" if authority else secret
