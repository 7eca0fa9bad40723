"""A bad file cannot hurt the agent: crafted GGUF headers, special files, a corrupt outbox or identity, and a
second agent on the same identity, each refused quickly with one line that reveals nothing of the file.

Against the real code: the bounded GGUF walker, real FIFOs, sockets, symlink loops, /proc and /dev files, real
SQLite files, real flock, and the installed `fleetfit-agent` CLI."""

import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import pytest

from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import MAX_DIMS, inspect_gguf, open_gguf
from tests.conftest import assert_one_line_error, run_cli

MARKER = "SECRET-7f3a"  # planted in files; must never appear in an error message

# GGUF value types
U8, U32, STRING, ARRAY, U64 = 0, 4, 8, 9, 10


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tensor(name: str, dims: tuple, ggml_type: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def gguf(kvs=(), tensors=(), n_kv=None, n_tensors=None, version=3, data=b"") -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data if data else body


def valid_gguf() -> bytes:
    """A small well-formed file with every section: scalars, a string, arrays of strings and of numbers, a
    nested array, and two F32 tensors with their data."""
    kvs = [kv("general.architecture", STRING, s("llama")), kv("general.name", STRING, s(MARKER)),
           kv("general.file_type", U32, struct.pack("<I", 0)),
           kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 3) + s("a") + s(MARKER) + s("c")),
           kv("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 1, 2, 3)),
           kv("nested", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", U8, 2) + b"\1\2")]
    tensors = [tensor("a.weight", (4, 2), 0, 0), tensor("b.weight", (4,), 0, 32)]
    return gguf(kvs, tensors, data=b"\0" * 48)


def refused(path, fragment: str) -> ModelError:
    """open_gguf refuses the file, saying `fragment`, within a second and with little memory allocated."""
    import gguf as _  # noqa: F401  (the import's own allocations are not the walker's)

    start = time.monotonic()
    with pytest.raises(ModelError) as caught:
        open_gguf(path)
    elapsed = time.monotonic() - start
    tracemalloc.start()
    try:
        with pytest.raises(ModelError):
            open_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert fragment in message, message
    assert MARKER not in message and "\n" not in message, message
    assert elapsed < 1.0, f"{elapsed:.2f} s"  # the unbounded reader looped for minutes
    assert peak < 1 << 20, f"{peak} bytes traced"  # the unbounded reader grew ~120 MB/s
    return caught.value


def write(tmp_path, data: bytes, name="crafted.gguf"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_small_valid_file_parses(tmp_path):
    path = write(tmp_path, valid_gguf())
    info = inspect_gguf(path)
    assert (info.architecture, info.name, info.quant, info.n_params, info.n_tensors) == ("llama", MARKER, "F32", 12, 2)
    assert open_gguf(path).tensors[1].data.tolist() == [0.0] * 4


HOSTILE = {
    "array of 2^40 bytes": (gguf([kv("x", ARRAY, struct.pack("<IQ", U8, 1 << 40))]), "elements of metadata entry 0"),
    "array of 2^40 u64": (gguf([kv("x", ARRAY, struct.pack("<IQ", U64, 1 << 40))]), "elements of metadata entry 0"),
    "array of 2^40 strings": (gguf([kv("x", ARRAY, struct.pack("<IQ", STRING, 1 << 40))]), "elements of"),
    "array whose count overflows u64 bytes": (gguf([kv("x", ARRAY, struct.pack("<IQ", U64, (1 << 64) - 1))]),
                                              "elements of"),
    "string of 2^62 bytes": (gguf([kv("x", STRING, struct.pack("<Q", 1 << 62))]), "truncated GGUF"),
    "key of 2^63 bytes": (gguf([struct.pack("<Q", 1 << 63) + bytes(64)]), "metadata key 0 is longer"),
    "2^63 metadata entries": (gguf(n_kv=1 << 63), "metadata count is larger than the file can hold"),
    "2^63 tensors": (gguf(n_tensors=1 << 63), "tensor count is larger than the file can hold"),
    "n_dims 1000": (gguf(tensors=[s("t") + struct.pack("<I", 1000) + b"\0" * 64]), f"1 to {MAX_DIMS} dimensions"),
    "dims whose product wraps u64": (gguf(tensors=[tensor("t", (1 << 32, 1 << 32, 2))]), "runs past the end"),
    "tensor offset 2^63": (gguf(tensors=[tensor("t", (4,), 0, 1 << 63)]), "runs past the end"),
    "arrays nested 50 deep": (gguf([kv("x", ARRAY, struct.pack("<IQ", ARRAY, 1) * 50)]), "nests arrays deeper"),
    "unknown value type": (gguf([kv("x", 99, b"\0" * 8)]), "unknown value type"),
    "unknown array element type": (gguf([kv("x", ARRAY, struct.pack("<IQ", 77, 1))]), "unknown element type"),
    "unknown tensor type": (gguf(tensors=[tensor("t", (4,), 9999)]), "unknown type"),
    "quantized rows not whole blocks": (gguf(tensors=[tensor("t", (33,), 2)]), "whole number of blocks"),
    "a repeated key": (gguf([kv(MARKER, U8, b"\1"), kv(MARKER, U8, b"\2")]), "repeats an earlier key"),
    "a repeated tensor": (gguf(tensors=[tensor(MARKER, (4,)), tensor(MARKER, (4,))]), "repeats an earlier tensor"),
    "a key that is not UTF-8": (gguf([kv(MARKER.encode() + b"\xff", U8, b"\1")]), "is not UTF-8"),
    "alignment not a power of two": (gguf([kv("general.alignment", U32, struct.pack("<I", 48))]), "power of two"),
    "alignment of the wrong type": (gguf([kv("general.alignment", U8, b"\x20")]), "power of two"),
    "version 1": (gguf(version=1), "this GGUF version is not supported"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian GGUF is not supported"),
    "not GGUF, contents not echoed": (MARKER.encode() * 10, "not a GGUF file"),
    "magic only": (b"GGUF", "truncated GGUF"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_crafted_header_is_refused_at_once(tmp_path, name):
    data, fragment = HOSTILE[name]
    refused(write(tmp_path, data), fragment)


def test_a_file_cut_anywhere_in_its_header_or_data_is_refused(tmp_path):
    data = valid_gguf()
    for keep in range(1, len(data)):
        refused(write(tmp_path, data[:keep]), "GGUF")  # truncated, or not GGUF when the magic itself is cut
    open_gguf(write(tmp_path, data))


def test_a_large_honest_header_is_walked_without_loading_it(tmp_path):
    """A 4 MB array and 200k strings: gguf's own reader spends ~8 µs and ~700 bytes per element on these; the
    bounded walker checks their sizes and seeks past them."""
    strings = b"".join(s("tok") for _ in range(200_000))
    path = write(tmp_path, gguf([kv("big", ARRAY, struct.pack("<IQ", U8, 4 << 20) + b"\0" * (4 << 20)),
                                 kv("toks", ARRAY, struct.pack("<IQ", STRING, 200_000) + strings)]))
    found = open_gguf(path)  # the first walk warms the reader's own caches
    tracemalloc.start()  # what the walk did, not how fast (a loaded machine took 4 s): under 1 MiB held of 5 MB
    open_gguf(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert set(found.fields) == {"big", "toks"} and found.fields["big"].contents() is None
    assert peak < 1 << 20, peak


def test_a_crafted_file_cannot_exhaust_memory_in_a_capped_process(tmp_path):
    """The issue's 100-byte file, in a process whose address space is capped: refused, not killed."""
    path = write(tmp_path, gguf([kv("x", ARRAY, struct.pack("<IQ", U8, 1 << 40))]))
    code = ("import resource, sys; from fleetfit.models.gguf_file import inspect_gguf; import gguf\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "try:\n    inspect_gguf(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ModelError truncated GGUF"), proc.stdout


# The header's own bounds (bytes walked, strings and arrays looped over, bytes kept, bytes past the tensor data)
# hold whatever the file's apparent size: holes cost nothing on disk, so a few KB can claim a terabyte.


def sparse(tmp_path, parts, size: int = 0, name="sparse.gguf"):
    """A file of `parts` (bytes written, or an int: that many bytes of hole), then a hole up to `size`."""
    path = tmp_path / name
    with open(path, "wb") as f:
        for part in parts:
            f.seek(part, os.SEEK_CUR) if isinstance(part, int) else f.write(part)
        f.truncate(max(size, f.tell()))
    assert path.stat().st_blocks * 512 < 1 << 20  # on disk: a few KB
    return path


def head(n_kv=0, n_tensors=0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


TIB = 1 << 40
OVER_BOUNDS = {  # name -> (parts, apparent size, what the refusal names)
    "nested empty arrays over a 1 TiB hole": ([head(1), kv("x", ARRAY, struct.pack("<IQ", ARRAY, 1 << 36))], TIB,
                                              "larger than 64 MiB"),
    "a 2^37-byte array over a 1 TiB hole": ([head(1), kv("x", ARRAY, struct.pack("<IQ", U8, 1 << 37))], TIB,
                                            "larger than 64 MiB"),
    "a 1 GiB string over a hole": ([head(1), kv("x", STRING, struct.pack("<Q", 1 << 30))], 2 << 30,
                                   "larger than 64 MiB"),
    "4M nested empty arrays in 48 MB": ([head(1), kv("x", ARRAY, struct.pack("<IQ", ARRAY, 4_000_000))], 64 << 20,
                                        "strings and arrays"),
    "4M empty strings in 32 MB": ([head(1), kv("x", ARRAY, struct.pack("<IQ", STRING, 4_000_000))], 64 << 20,
                                  "strings and arrays"),
    "3M empty arrays inside an array": ([head(1), kv("x", ARRAY, struct.pack("<IQ", ARRAY, 2) +
                                                     struct.pack("<IQ", ARRAY, 3_000_000))], 64 << 20,
                                            "strings and arrays"),
    "a valid file followed by a 1 TiB hole": ([valid_gguf()], TIB, "past the end of its tensor data"),
    "a tensor-less file followed by a 1 TiB hole": ([head(1), kv("general.architecture", STRING, s("llama"))], TIB,
                                                    "past the end of its tensor data"),
}


@pytest.mark.parametrize("name", list(OVER_BOUNDS))
def test_a_header_past_its_bounds_is_refused_at_once_whatever_the_apparent_size(tmp_path, name):
    parts, size, fragment = OVER_BOUNDS[name]
    refused(sparse(tmp_path, parts, size), fragment)


KEPT = {  # 300 x 64 KiB kept, in the three places a header keeps bytes
    "string values": [head(300)] + [kv(f"k{i}", STRING, struct.pack("<Q", 1 << 16)) + bytes(1 << 16)
                                    for i in range(300)],
    "keys": [head(300)] + [struct.pack("<Q", 1 << 16) + f"{i:05}".encode() + bytes((1 << 16) - 5) +
                           struct.pack("<IB", U8, 1) for i in range(300)],
    "tensor names": [head(0, 300)] + [struct.pack("<Q", 1 << 16) + f"{i:05}".encode() + bytes((1 << 16) - 5) +
                                      struct.pack("<IQIQ", 1, 32, 0, 0) for i in range(300)],
}


@pytest.mark.parametrize("name", list(KEPT))
def test_a_header_that_would_keep_more_than_its_bound_is_refused(tmp_path, name):
    """The issue's 16,384 values of 64 KiB kept 1.1 GB; now what is kept stops at MAX_KEPT_BYTES."""
    from fleetfit.models.gguf_file import MAX_KEPT_BYTES

    path = write(tmp_path, b"".join(KEPT[name]))
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as caught:
            open_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "past 16 MiB" in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert peak < 3 * MAX_KEPT_BYTES, peak


def stops_at_third_call():
    """A walk's `check` that stops it (TimeoutError, as a job's deadline does) on its third call, and its calls."""
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 3:
            raise TimeoutError("stopped")

    return check, calls


def test_the_walk_of_a_long_header_can_be_stopped(tmp_path):
    """A job's deadline or stop request reaches into the walk: `check` is called while it loops, and what it
    raises ends the walk."""
    n = 1_000_000
    path = write(tmp_path, gguf([kv("toks", ARRAY, struct.pack("<IQ", STRING, n) + s("t") * n)]))
    check, calls = stops_at_third_call()
    with pytest.raises(TimeoutError):
        open_gguf(path, check=check)
    assert len(calls) == 3
    assert open_gguf(path).fields["toks"].contents() is None  # and without a check, the same file is read


LOOP_SHAPES = {  # each loop of the walk shorter than the check interval (256 here); together many times longer
    "many entries of short string arrays": [kv(f"k{i}", ARRAY, struct.pack("<IQ", STRING, 200) + s("t") * 200)
                                             for i in range(2000)],
    "arrays of short string arrays": [kv("x", ARRAY, struct.pack("<IQ", ARRAY, 200) +
                                         (struct.pack("<IQ", STRING, 200) + s("") * 200) * 200)],
    "many scalar entries": [kv(f"k{i}", U8, b"\1") for i in range(20_000)],
    "many tensors": [tensor(f"t{i}", (32,)) for i in range(20_000)],
}


@pytest.mark.parametrize("name", list(LOOP_SHAPES))
def test_the_walk_is_stoppable_whatever_shape_its_loops_have(tmp_path, name, monkeypatch):
    """`check` is called every CHECK_EVERY steps of the whole walk, however a header splits them between entries,
    arrays, nested arrays and tensors (a check per loop's own count never came for loops just under it)."""
    from fleetfit.models import gguf_file

    monkeypatch.setattr(gguf_file, "CHECK_EVERY", 256)
    parts = LOOP_SHAPES[name]
    tensors = parts if name == "many tensors" else []
    path = write(tmp_path, gguf([] if tensors else parts, tensors, data=b"\0" * 128 if tensors else b""))
    check, calls = stops_at_third_call()
    with pytest.raises(TimeoutError):
        open_gguf(path, check=check)
    assert len(calls) == 3


# Special files: each gets its own one-line error, and nothing blocks (a FIFO is never opened).


@pytest.fixture()
def special(tmp_path):
    """name -> (path, expected fragment) of every kind of file that is not a model."""
    os.mkfifo(tmp_path / "fifo.gguf")
    (tmp_path / "dir.gguf").mkdir()
    (tmp_path / "loop-a.gguf").symlink_to(tmp_path / "loop-b.gguf")
    (tmp_path / "loop-b.gguf").symlink_to(tmp_path / "loop-a.gguf")
    (tmp_path / "broken.gguf").symlink_to(tmp_path / "nothing-here")
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "secret.gguf").write_text(MARKER * 4)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.gguf"))
    (tmp_path / "proc.gguf").symlink_to("/proc/self/status")
    yield {
        "fifo": (tmp_path / "fifo.gguf", "is a named pipe (FIFO)"),
        "directory": (tmp_path / "dir.gguf", "is a directory"),
        "symlink loop": (tmp_path / "loop-a.gguf", "a symlink loop"),
        "broken symlink": (tmp_path / "broken.gguf", "is a broken symlink"),
        "empty": (tmp_path / "empty.gguf", "is empty (0 bytes)"),
        "not GGUF": (tmp_path / "secret.gguf", "not a GGUF file"),
        "socket": (tmp_path / "sock.gguf", "is a socket"),
        "device": ("/dev/null", "is a character device"),
        "/proc file": ("/proc/self/cmdline", "kernel file under /proc"),
        "link to /proc": (tmp_path / "proc.gguf", "kernel file under /proc"),
        "/sys file": ("/sys/kernel/mm/transparent_hugepage/enabled", "kernel file under /sys"),
        "missing": (tmp_path / "absent.gguf", "model file not found"),
    }
    sock.close()


def test_special_files_get_precise_errors_and_never_block(special):
    for name, (path, fragment) in special.items():
        if not os.path.lexists(path) and name != "missing":
            continue  # e.g. no transparent hugepages on this kernel
        outcome = []

        def inspect():
            try:
                inspect_gguf(path)
            except Exception as exc:
                outcome.append(exc)

        worker = threading.Thread(target=inspect, daemon=True)
        worker.start()
        worker.join(5)
        assert outcome, f"{name}: inspect_gguf blocked or accepted the file"
        assert isinstance(outcome[0], ModelError), (name, outcome[0])
        message = str(outcome[0])
        assert fragment in message and MARKER not in message, (name, message)


def test_an_unreadable_file_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    shared = pathlib.Path(tempfile.mkdtemp(prefix="fleetfit-unreadable-"))
    try:
        os.chmod(shared, 0o755)
        (shared / "locked.gguf").write_bytes(valid_gguf())
        os.chmod(shared / "locked.gguf", 0)
        code = ("import os, sys, gguf; from fleetfit.models.gguf_file import inspect_gguf\n"
                "os.setgid(65534); os.setuid(65534)\n"
                "try:\n    inspect_gguf(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(shared / "locked.gguf")], capture_output=True,
                              text=True, timeout=60)
    finally:
        shutil.rmtree(shared)
    assert proc.stdout.startswith("ModelError cannot read model file (permission denied)"), proc.stdout + proc.stderr


def test_the_cli_refuses_each_bad_file_in_one_line(special, tmp_path):
    crafted = write(tmp_path, HOSTILE["array of 2^40 bytes"][0])
    cases = [(crafted, "elements of metadata entry 0"), *special.values()]
    for path, fragment in cases:
        if not os.path.lexists(path) and "not found" not in fragment:
            continue
        proc = run_cli("fleetfit-agent", "profile", "--model", str(path), "--cache-dir", str(tmp_path / "cache"),
                       timeout=60)
        assert_one_line_error(proc, fragment)
        assert MARKER not in proc.stderr + proc.stdout
    proc = run_cli("fleetfit-agent", "models", "quantize", str(crafted), "--to", "Q8_0", timeout=60)
    assert_one_line_error(proc, "elements of metadata entry 0")


# The agent's own state: a corrupt outbox or identity is refused on start with one line naming the file and the
# way out; a second agent on the same identity or outbox is refused while the first runs.


def an_outbox(path, entries: int = 300):
    from fleetfit.agent.outbox import Outbox
    from fleetfit.v1 import fleetfit_pb2 as pb

    box = Outbox(path)
    for i in range(entries):
        box.put(pb.ReportResultRequest(result=pb.ProfileResult(result_id=f"r-{i}", error=MARKER * 20)))
    box.close()
    return path.stat().st_size


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


OUTBOX_DAMAGE = {
    "truncated to half": lambda p, size: os.truncate(p, size // 2),
    "truncated to 100 bytes": lambda p, size: os.truncate(p, 100),
    "last page cut": lambda p, size: os.truncate(p, size - 4096),
    "overwritten": lambda p, size: p.write_bytes(MARKER.encode() * 1000),
    "header zeroed": lambda p, size: overwrite(p, 0, bytes(100)),
    "a page of noise": lambda p, size: overwrite(p, 2 * 4096, os.urandom(4096)),
    "a page's cells zeroed": lambda p, size: overwrite(p, 2 * 4096 + 100, bytes(3000)),
}


@pytest.fixture()
def enrolled(tmp_path):
    """An identity file for a coordinator that is not there: `run` must refuse before it tries to connect."""
    from fleetfit.agent import identity

    path = tmp_path / "agent.json"
    identity.save(identity.Identity("127.0.0.1:1", "dev-hostile", "secret"), path)
    return path


def agent_run(identity_path, outbox_path, *extra, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cli("fleetfit-agent", "run", "--identity", str(identity_path), "--outbox", str(outbox_path),
                   "--insecure", *extra, timeout=timeout)


@pytest.mark.parametrize("damage", list(OUTBOX_DAMAGE))
def test_a_corrupt_outbox_is_refused_on_start_in_one_line(tmp_path, enrolled, damage):
    from fleetfit.agent.outbox import Outbox, OutboxError

    path = tmp_path / "outbox.sqlite3"
    OUTBOX_DAMAGE[damage](path, an_outbox(path))
    with pytest.raises(OutboxError) as caught:
        Outbox(path)
    assert str(caught.value).startswith(f"outbox {path} is corrupt (")
    proc = agent_run(enrolled, path)
    assert_one_line_error(proc, f"outbox {path} is corrupt")
    assert "move it aside to start a new one" in proc.stderr and MARKER not in proc.stderr


def test_an_intact_outbox_still_opens_with_its_entries(tmp_path):
    from fleetfit.agent.outbox import Outbox

    path = tmp_path / "outbox.sqlite3"
    an_outbox(path, 50)
    box = Outbox(path)
    assert len(box) == 50
    box.close()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_outbox_that_is_not_a_file_is_refused_without_blocking(tmp_path, enrolled, kind):
    path = tmp_path / "outbox.sqlite3"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    assert_one_line_error(agent_run(enrolled, path, timeout=30), f"outbox {path} is not a regular file")


IDENTITY_DAMAGE = {
    "empty": b"",
    "truncated": b'{"coordinator": "127.0.0.1:1", "device_id": "d',
    "overwritten with binary": MARKER.encode() + b"\xff\xfe\x00" * 50,
    "a JSON list": b'["' + MARKER.encode() + b'"]',
    "a field missing": b'{"coordinator": "127.0.0.1:1", "device_id": "dev"}',
    "an unknown field": b'{"coordinator": "c", "device_id": "d", "secret": "s", "' + MARKER.encode() + b'": 1}',
    "a field of the wrong type": b'{"coordinator": "c", "device_id": 7, "secret": "s"}',
}


@pytest.mark.parametrize("damage", list(IDENTITY_DAMAGE))
def test_a_corrupt_identity_is_refused_on_start_in_one_line(tmp_path, damage):
    path = tmp_path / "agent.json"
    path.write_bytes(IDENTITY_DAMAGE[damage])
    proc = agent_run(path, tmp_path / "outbox.sqlite3")
    assert_one_line_error(proc, f"identity {path} is corrupt")
    assert "move it aside and join again" in proc.stderr and MARKER not in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_identity_that_is_not_a_file_is_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "agent.json"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    assert_one_line_error(agent_run(path, tmp_path / "outbox.sqlite3", timeout=30),
                          f"identity {path} is not a regular file")


def test_a_second_agent_on_the_same_identity_or_outbox_is_refused(coordinator, tmp_path):
    from fleetfit.agent import identity
    from fleetfit.v1 import fleetfit_pb2 as pb
    from tests.conftest import BIN, fleet_stub

    first_identity, outbox = tmp_path / "agent.json", tmp_path / "outbox.sqlite3"
    identity.save(identity.join(coordinator.address, coordinator.join_token(), "dev-twice", insecure=True),
                  first_identity)
    other_identity = tmp_path / "other.json"
    identity.save(identity.Identity("127.0.0.1:1", "dev-other", "secret"), other_identity)
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(first_identity), "--outbox",
                              str(outbox), "--insecure", "--cache-dir", str(tmp_path / "cache")], stdout=log, stderr=log)
    try:
        fleet, deadline = fleet_stub(coordinator), time.monotonic() + 60
        while not fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices:
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        same_identity = agent_run(first_identity, tmp_path / "elsewhere.sqlite3", "--cache-dir", str(tmp_path))
        assert_one_line_error(same_identity, f"another fleetfit-agent (pid {first.pid}) is running with the "
                                             f"identity {first_identity}")
        same_outbox = agent_run(other_identity, outbox)
        assert_one_line_error(same_outbox, f"(pid {first.pid}) is running with the outbox {outbox}")
        rejoin = run_cli("fleetfit-agent", "run", "--identity", str(first_identity), "--device-id", "dev-new",
                         "--token", coordinator.join_token(), "--coordinator", coordinator.address, "--insecure")
        assert_one_line_error(rejoin, "is running with the identity")  # refused before it could overwrite it
        assert identity.load(first_identity).device_id == "dev-twice"
        assert first.poll() is None
        first.kill()  # however the first one ends, the kernel drops its lock
        first.wait()
        again = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(other_identity), "--outbox",
                                  str(outbox), "--insecure"], stderr=subprocess.PIPE, text=True)
        try:  # it got past the lock, and waits for a coordinator at 127.0.0.1:1 (it never gives up on one)
            time.sleep(3)
            assert again.poll() is None
        finally:
            again.kill()
        assert "is running with" not in again.communicate()[1]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
