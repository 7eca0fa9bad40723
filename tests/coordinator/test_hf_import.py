"""hf:ORG/REPO/FILE.gguf[@REVISION] into the model store, through a local HTTP server that answers as the Hugging Face
hub does (GET/HEAD /ORG/REPO/resolve/REVISION/FILE with X-Repo-Commit, X-Linked-Etag, X-Linked-Size, and Range),
serving the SmolLM2 file; the coordinator's huggingface_hub finds it through HF_ENDPOINT. No test leaves the
machine."""

import hashlib
import http.server
import re
import threading

import grpc
import pytest

from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import assert_one_line_error, fleet_stub, run_cli

pytest.importorskip("huggingface_hub", reason="huggingface_hub (the hf extra) is not installed")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(http.server.ThreadingHTTPServer):
    """The resolve endpoint of one repository holding `files` ({name: bytes}); `cut_first` cuts the first download
    halfway (a dropped connection), `lie` claims another SHA-256 for every file."""

    def __init__(self, files: dict[str, bytes], cut_first: bool = False, lie: bool = False):
        super().__init__(("127.0.0.1", 0), Resolve)
        self.files, self.cut_first, self.lie, self.ranges = files, cut_first, lie, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Resolve(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        m = re.fullmatch(r"/test-org/smol/resolve/([^/]+)/(.+)", self.path.split("?")[0])
        data = self.server.files.get(m.group(2)) if m and m.group(1) in ("main", COMMIT) else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        digest = hashlib.sha256(b"other" if self.server.lie else data).hexdigest()
        start = 0
        if body and (asked := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))):
            start = int(asked.group(1))
            self.server.ranges.append(start)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{digest}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("ETag", f'"{digest}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if self.server.cut_first and start == 0:
            self.server.cut_first = False
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture()
def hub(ladder, monkeypatch):
    def start(**kwargs):
        server = Hub({"smollm2-Q4_1.gguf": ladder["Q4_1"].read_bytes()}, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        return server

    servers = []
    yield start
    for server in servers:
        server.shutdown()


def test_a_hub_file_is_pinned_to_its_commit_verified_stored_and_resumed(coordinator, hub, ladder):
    server = hub(cut_first=True)
    stub = fleet_stub(coordinator)
    request = pb.ImportModelRequest(ref="hf:test-org/smol/smollm2-Q4_1.gguf@main", added_by="tester@here")
    try:
        reply = stub.ImportModel(request, timeout=300)
    except grpc.RpcError:  # huggingface_hub gave up on the cut transfer: the next try resumes it with a Range
        reply = stub.ImportModel(request, timeout=300)
    digest = hashlib.sha256(ladder["Q4_1"].read_bytes()).hexdigest()
    assert reply.model.name == "smollm2-Q4_1" and reply.model.sha256 == digest
    assert reply.model.added_by == f"hf:test-org/smol/smollm2-Q4_1.gguf@{COMMIT[:12]} by tester@here"
    assert server.ranges and 0 < server.ranges[0] < len(ladder["Q4_1"].read_bytes())  # resumed, not restarted
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models] == ["smollm2-Q4_1"]
    assert not (coordinator.blob_dir / "hf-cache").exists()  # stored once, not twice


def test_hub_failures_are_one_line_and_store_nothing(coordinator, hub, tmp_path):
    hub(lie=True)
    env = {"FLEETFIT_INSECURE": "1", "FLEETFIT_TOKEN": coordinator.operator_token,
           "FLEETFIT_COORDINATOR": coordinator.address, "FLEETFIT_STATE_DIR": str(tmp_path / "none")}
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/smol/smollm2-Q4_1.gguf", env=env),
                          "hash to sha256:")  # a mirror that claims another SHA-256
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/smol/missing.gguf", env=env),
                          "cannot download hf:test-org/smol/missing.gguf")
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/../x.gguf", env=env),
                          "is not a Hugging Face file")
    assert not fleet_stub(coordinator).ListModels(pb.ListModelsRequest(), timeout=10).models
