"""A local HTTP server that answers as the Hugging Face hub does for one repository, test-org/smol: GET/HEAD
/test-org/smol/resolve/REVISION/FILE with X-Repo-Commit, X-Linked-Etag, X-Linked-Size, and Range (huggingface_hub
finds it through HF_ENDPOINT). The `hub` fixture (tests/conftest.py) starts one serving the SmolLM2 file."""

import hashlib
import http.server
import re

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
