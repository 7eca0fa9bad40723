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
    start = time.monotonic()
    found = open_gguf(path)
    elapsed = time.monotonic() - start
    tracemalloc.start()
    open_gguf(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert set(found.fields) == {"big", "toks"} and found.fields["big"].contents() is None
    assert elapsed < 1.0 and peak < 1 << 20, (elapsed, peak)


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
