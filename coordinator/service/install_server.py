"""What `fleetfit serve --install-listen` serves over HTTPS (the fleet's own CA): the one-line join.

- GET /join.sh: the script `fleetfit token create` prints a line for (coordinator/service/join.sh, with this coordinator's
  addresses filled in);
- GET /simple/ and /simple/NAME/: a PEP 503 index of the wheelhouse the operator prepared (`fleetfit wheelhouse
  add`), each link with its sha256; GET /files/FILE: one of its files;
- GET /llama/CLASS/: the llama.cpp wheel the fleet holds for a class of device (JSON: the file, its sha256 and the
  build record of the device that built and checked it), 404 when none; GET /llama/CLASS/FILE: the wheel;
- PUT /llama/CLASS/FILE: a device's checked wheel, with its build record (header X-Fleetfit-Build, JSON), from an
  enrolled agent only (Authorization: Bearer agent.ID.SECRET). The first upload of a class is kept; later ones are
  refused (409), so a device never replaces the wheel another checked.

Nothing here is fetched from anywhere else; every request is bounded (path length, upload size).
"""

import http.server
import json
import logging
import pathlib
import re
import socket
import ssl
import threading
import urllib.parse

from fleetfit.coordinator.service import auth, wheelhouse
from fleetfit.coordinator.service.store import Store

log = logging.getLogger("fleetfit.coordinator")

JOIN_SCRIPT = pathlib.Path(__file__).with_name("join.sh")
MAX_UPLOAD_BYTES = 2 << 30  # a CUDA build of llama-cpp-python is a few hundred MiB
MAX_BUILD_RECORD = 16 << 10
MAX_PATH = 512


def join_line(install_url: str, token: str) -> str:
    """The one line `fleetfit token create` prints: -k because the device has no CA yet; join.sh checks the
    coordinator's CA against the token's fingerprint before it sends the token or installs anything."""
    return f"curl -fsSk {install_url.rstrip('/')}/join.sh | sh -s -- --token {token}"


def remember_url(state: pathlib.Path, listen: str, port: int, advertised: str | None) -> str:
    """The URL devices reach the install at (the --install-listen host, or the advertised host for a wildcard),
    kept in the state directory for `fleetfit token create`."""
    host = listen.rpartition(":")[0]
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        host = advertised.rpartition(":")[0] if advertised else socket.getfqdn()
    url = f"https://{host}:{port}"
    (state / "install-url").write_text(url + "\n")
    return url


def served_url(state: pathlib.Path) -> str | None:
    try:
        return (state / "install-url").read_text().strip() or None
    except OSError:
        return None


def join_script(install_url: str, coordinators: list[str]) -> str:
    return JOIN_SCRIPT.read_text().replace("@INSTALL_URL@", install_url).replace("@COORDINATORS@",
                                                                                ",".join(coordinators))


def index_page(names: list[str], prefix: str) -> str:
    links = "\n".join(f'<a href="{prefix}{n}">{n}</a><br>' for n in names)
    return f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n"


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "fleetfit-install"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # one line per request on the coordinator's log, at debug
        log.debug("install %s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes | str, kind: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _file(self, path: pathlib.Path | None) -> None:
        if path is None or not path.is_file():
            return self._send(404, "not found\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                self.wfile.write(chunk)

    def _parts(self) -> list[str] | None:
        path = urllib.parse.urlsplit(self.path).path
        if len(path) > MAX_PATH:
            return None
        return [urllib.parse.unquote(p) for p in path.split("/") if p]

    def do_GET(self) -> None:
        house: wheelhouse.Wheelhouse = self.server.house
        parts = self._parts()
        if parts is None:
            return self._send(414, "path too long\n")
        if parts == ["join.sh"]:
            host = self.headers.get("Host", "")[:255] or f"{self.server.server_address[0]}:{self.server.server_port}"
            if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", host):
                return self._send(400, "bad Host header\n")
            return self._send(200, join_script(f"https://{host}", self.server.coordinators(host)),
                              "text/x-shellscript; charset=utf-8")
        if parts == ["simple"]:
            return self._send(200, index_page([f"{p}/" for p in house.projects()], "/simple/"), "text/html")
        if len(parts) == 2 and parts[0] == "simple":
            files = house.project_files(parts[1])
            if not files:
                return self._send(404, f"no project {parts[1][:80]!r} in this wheelhouse\n")
            links = [f"{f.name}#sha256={house.digest(f)}" for f in files]
            page = "\n".join(f'<a href="/files/{urllib.parse.quote(n.split("#")[0])}#{n.split("#")[1]}">'
                             f'{n.split("#")[0]}</a><br>' for n in links)
            return self._send(200, f"<!DOCTYPE html>\n<html><body>\n{page}\n</body></html>\n", "text/html")
        if len(parts) == 2 and parts[0] == "files":
            return self._file(house.package_file(parts[1]))
        if len(parts) == 2 and parts[0] == "llama":
            held = house.llama(parts[1])
            if held is None:
                return self._send(404, f"no llama.cpp wheel for device class {parts[1][:80]!r} yet\n")
            return self._send(200, json.dumps(held) + "\n", "application/json")
        if len(parts) == 3 and parts[0] == "llama":
            return self._file(house.llama_file(parts[1], parts[2]))
        return self._send(404, "not found\n")

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        house: wheelhouse.Wheelhouse = self.server.house
        parts = self._parts()
        if parts is None or len(parts) != 3 or parts[0] != "llama":
            return self._send(404, "not found\n")
        cred = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        device_id = auth.check_agent(self.server.store, cred, {}) if cred.startswith("agent.") else None
        if device_id is None:
            return self._send(401, "an enrolled agent's credential is required (Authorization: Bearer agent....)\n")
        try:
            size = int(self.headers.get("Content-Length", ""))
            record = json.loads(self.headers.get("X-Fleetfit-Build", "")[:MAX_BUILD_RECORD])
            if not isinstance(record, dict):
                raise ValueError("the build record is not a JSON object")
        except ValueError as exc:
            return self._send(400, f"Content-Length and X-Fleetfit-Build (JSON) are required: {exc}\n")
        if not 0 < size <= MAX_UPLOAD_BYTES:
            return self._send(413, f"a wheel of {size} bytes is out of bounds (at most {MAX_UPLOAD_BYTES})\n")
        try:
            kept = house.add_llama(parts[1], parts[2], self.rfile, size, {**record, "uploaded_by": device_id})
        except wheelhouse.WheelhouseError as exc:
            return self._send(409 if exc.conflict else 400, f"{exc}\n")
        log.info("llama.cpp wheel %s for device class %s uploaded by %s", parts[2], parts[1], device_id)
        return self._send(201, json.dumps(kept) + "\n", "application/json")


class InstallServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: tuple[str, int], house: "wheelhouse.Wheelhouse", store: Store,
                 context: ssl.SSLContext, coordinators):
        super().__init__(listen, Handler)
        self.house, self.store, self.coordinators = house, store, coordinators
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request, client_address) -> None:
        try:
            request.settimeout(30)
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return
        super().finish_request(request, client_address)


def start(listen: str, house: "wheelhouse.Wheelhouse", store: Store, tls_dir: pathlib.Path, chain_pem: bytes,
          coordinators) -> InstallServer:
    """Serve on `listen` (HOST:PORT; port 0 picks one) in a thread; `coordinators(host)` gives the gRPC addresses
    a device that reached this server as `host` is to join (comma-joined in join.sh)."""
    chain = tls_dir / "server-chain.pem"  # the server certificate, then the CA: join.sh pins the CA from it
    chain.write_bytes(chain_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, tls_dir / "server-key.pem")
    host, _, port = listen.rpartition(":")
    server = InstallServer((host.strip("[]"), int(port)), house, store, context, coordinators)
    threading.Thread(target=server.serve_forever, name="fleetfit-install", daemon=True).start()
    return server
