"""A coordinator on its own event-loop thread, in this process: the harness quickstart and the tests use."""

import asyncio
import pathlib
import threading

from fleetfit.coordinator.service import pki
from fleetfit.coordinator.service.enrollment import join_token_text, operator_token
from fleetfit.coordinator.service.model_store import ModelStore, default_blob_dir
from fleetfit.coordinator.service.server import start_server, stop_server
from fleetfit.coordinator.service.store import DEFAULT_LEASE_S, Store


class BackgroundCoordinator:
    """A coordinator on its own event-loop thread (quickstart, tests): start() returns the bound port.

    Plaintext unless `tls`; `operator_token` authenticates operator calls, `join_token()` enrolls agents.
    """

    def __init__(self, db_path: pathlib.Path | str, listen: str = "127.0.0.1:0", state_dir: pathlib.Path | None = None,
                 tls: bool = False, require_client_cert: bool = False, lease_s: float = DEFAULT_LEASE_S,
                 blob_dir: pathlib.Path | None = None, advertise: bool = False):
        self.db_path, self.listen, self.lease_s = db_path, listen, lease_s
        self.state_dir = state_dir or pathlib.Path(str(db_path) + ".d")
        self.blob_dir = blob_dir or default_blob_dir(str(db_path), self.state_dir)
        self.tls, self.require_client_cert = tls, require_client_cert
        self.advertise = advertise  # as a replica: told to agents through the database (start_server)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> int:
        self.thread.start()
        self.store = Store(self.db_path)
        self.operator_token = operator_token(self.store, self.state_dir)
        names = pki.names_for(self.listen.rsplit(":", 1)[0])
        self.authority = pki.load_or_create(self.state_dir / "tls", names) if self.tls else None
        self.server, self.health, self.port = asyncio.run_coroutine_threadsafe(
            start_server(self.store, self.listen, self.authority, self.require_client_cert, self.lease_s,
                         ModelStore(self.blob_dir), self.listen if self.advertise else None),
            self.loop).result()
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def join_token(self, labels: dict[str, str] | None = None, expires_s: float = 3600,
                   device_id: str | None = None) -> str:
        return join_token_text(self.store, self.authority, labels or {}, expires_s, device_id)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(stop_server(self.server, self.health, 1.0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.store.close()
