"""The agent's model cache: real models fetched from the registry, the precision ladder derived from them, and
synthetic files of catalogue shapes; and the rules for what a request may name.

Safe under several processes sharing one cache: each file is made under a unique temporary name in its target
directory and renamed into place, while an exclusive lock on the target (`<file>.lock`) is held; whoever takes
the lock second finds the file made and uses it. The kernel drops the lock of a writer that dies (SIGKILL, power
loss), so a partial file found while holding the lock is a dead writer's, and is removed.
"""

import base64
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import math
import os
import pathlib
import re
import shutil
import stat
import time
import uuid

from fleetfit.agent.isolation import Deadline, WorkerFailure, run_worker
from fleetfit.models import job_bounds, real_models
from fleetfit.models.catalogue import Architecture
from fleetfit.models.errors import ModelError, NoRoomError
from fleetfit.models.gguf_file import GgufInfo, inspect_gguf
from fleetfit.models.quants import llama_ftype, parse_quant

QUANTIZE_TIMEOUT_S = 1800.0
NAME_REFUSED = ("a job names a model by its catalogue or cache name (letters, digits, '.', '_', '-'), "
                "or a file by ModelRef.path inside a directory this device allows")
# The same words whatever the reason, so that a refusal tells nothing about the file (not even whether it exists).
PATH_REFUSED = ("model path refused: a job may name only regular files inside the directories this device allows "
                "(fleetfit-agent run --allow-dir DIR)")
UNUSABLE = "the model file the job names is not a usable GGUF file"


def default_cache_dir() -> pathlib.Path:
    if "FLEETFIT_CACHE_DIR" in os.environ:
        return pathlib.Path(os.environ["FLEETFIT_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return pathlib.Path(xdg) / "fleetfit"


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    name: str  # catalogue name, or the file's stem
    path: pathlib.Path
    origin: str  # "file" (a path given by the user), "real" (fetched), "derived" (requantized from a real one)


def is_path(ref: str) -> bool:
    """Whether what the device's owner typed names a file rather than a model (the local CLI only)."""
    return os.sep in ref or ref.endswith(".gguf") or os.path.exists(ref)


# ---------------------------------------------------------------- what a request may name

def checked_name(name: str) -> str:
    """A model name that can only be a catalogue, real or cached model's name, never a path."""
    if not job_bounds.is_model_name(name):
        raise ModelError(NAME_REFUSED)
    return name


def open_job_file(path: str, allowed_dirs: list[pathlib.Path]) -> tuple[int, str]:
    """A file a job names, opened once: (descriptor, its resolved path). Only a regular file inside one of
    `allowed_dirs`, refused with PATH_REFUSED otherwise. The check that counts is made on the open descriptor (the
    kernel's path of the file it holds), so a directory swapped for a symlink at any moment cannot lead outside;
    everything after reads the descriptor (`fd_path`), the worker too, never the name again."""
    roots = [os.path.realpath(d) for d in allowed_dirs]

    def inside(real: str) -> bool:
        return any(os.path.commonpath([real, root]) == root for root in roots)

    real = os.path.realpath(path)
    try:
        if not inside(real) or not stat.S_ISREG(os.stat(real).st_mode):  # a FIFO or device is never opened
            raise ModelError(PATH_REFUSED)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise ModelError(PATH_REFUSED) from None
    try:
        opened = os.readlink(fd_path(fd))
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not inside(opened):
            raise ModelError(PATH_REFUSED)
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def fd_path(fd: int) -> str:
    """A name that opens the file `fd` holds (in a worker given the same descriptor too), whatever its path does."""
    return f"/proc/self/fd/{fd}"


def inspect(path: str | pathlib.Path, job: bool = False, deadline: Deadline | None = None) -> GgufInfo:
    """The file's GGUF header, walked inside the job's deadline; for a job-named file a refusal that does not quote
    the file."""
    try:
        return inspect_gguf(path, deadline.checker("reading of the model file's header") if deadline else None)
    except ModelError:
        if job:
            raise ModelError(UNUSABLE) from None
        raise


def cached_file(cache_dir: pathlib.Path, name: str, quant: str | None) -> pathlib.Path | None:
    """A finished file of `name` in the cache (at `quant`, or the only one there is when quant is None)."""
    found = [path for n, q, path, _ in cached_models(cache_dir) if n == name and quant in (None, q)]
    return found[0] if len(found) == 1 or (found and quant) else None


def cached_models(cache_dir: pathlib.Path) -> list[tuple[str, str, pathlib.Path, int]]:
    """(name, quant, path, bytes) for every finished model file in the cache: fetched and derived ones under
    models/<name>/<name>-<quant>.gguf, the coordinator's stored ones under stored/<sha256>/ (and derived/ there),
    synthetic ones under synthetic/<arch>-<quant>.gguf."""
    rows = []
    for path in sorted((cache_dir / "models").glob("*/*.gguf")):
        name = path.parent.name
        rows.append((name, path.stem.removeprefix(f"{name}-"), path))
    for path in sorted([*(cache_dir / "stored").glob("*/*.gguf"), *(cache_dir / "stored").glob("*/derived/*.gguf")]):
        rows.append((path.stem.rpartition("-")[0], path.stem.rpartition("-")[2], path))  # agent/model_fetch.py
    for path in sorted((cache_dir / "synthetic").glob("*.gguf")):
        name, _, quant = path.stem.rpartition("-")
        if name:
            rows.append((name, quant, path))
    return [(name, quant, path, size) for name, quant, path in rows if (size := _regular_file_size(path)) is not None]


def _regular_file_size(path: pathlib.Path) -> int | None:
    """The size of a regular file; None for anything else in the cache (a broken link, a loop, a FIFO)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# ---------------------------------------------------------------- making files, one process at a time

@contextlib.contextmanager
def exclusive(target: pathlib.Path, deadline: Deadline | None = None):
    """Hold the lock of `target` (a file beside it) while making it; waiting is bounded by the job's deadline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline else 0))
                break
            except BlockingIOError:
                deadline.wait(0.1, f"wait for another process making {target.name}")
        try:
            for partial in target.parent.glob(f".{glob.escape(target.name)}.*.part"):  # dead writers': we hold the lock
                partial.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def partial_path(target: pathlib.Path) -> pathlib.Path:
    """A temporary name beside `target`, unique to this writer."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")


def pull(name: str, cache_dir: pathlib.Path, deadline: Deadline | None = None) -> pathlib.Path:
    model = real_models.real_model(name)
    target = real_models.model_file(cache_dir, model.name, model.quant)
    with exclusive(target, deadline):
        timeout_s = deadline.remaining_s() if deadline else None
        try:
            return real_models.pull(model.name, cache_dir, timeout_s=timeout_s)
        except ModelError:
            if deadline:
                deadline.check("model fetch")
            raise


def derive(src: pathlib.Path, quant: str, dst: pathlib.Path, threads: int,
           deadline: Deadline | None = None) -> pathlib.Path:
    """Write `src` requantized to `quant` at `dst` with llama.cpp's own quantizer; atomic on success."""
    inspect(src, deadline=deadline)  # refuse a missing or damaged source with a clear message
    with exclusive(dst, deadline):
        if dst.is_file():  # another process made it while this one waited
            return dst
        partial = partial_path(dst)
        try:
            run_worker({"op": "quantize", "src": str(src), "dst": str(partial), "ftype": llama_ftype(quant),
                        "threads": threads}, deadline or QUANTIZE_TIMEOUT_S, phase=f"derivation of {quant}")
            os.replace(partial, dst)
        except WorkerFailure as exc:
            if exc.failure in ("timeout", "stopped"):
                raise
            raise ModelError(f"could not derive {quant} from {src.name}: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
    return dst


def synthesize(arch: str | Architecture, quant: str, cache_dir: pathlib.Path, deadline: Deadline | None = None,
               force: bool = False, seed: int = 0) -> pathlib.Path:
    """The synthetic GGUF of a catalogue shape in the cache (synthetic/<arch>-<quant>.gguf), written by a worker
    (so the job's deadline can end it) unless already there. A shape the catalogue does not know (an Architecture)
    is cached under its name and a digest of the shape (two shapes sharing a name never share a file)."""
    shape = None
    if not isinstance(arch, str):
        from fleetfit.models.shapes import to_proto

        shape = to_proto(arch).SerializeToString(deterministic=True)
        arch = f"{arch.name}-{hashlib.sha256(shape).hexdigest()[:12]}"
    target = synthetic_file(cache_dir, arch, quant)
    with exclusive(target, deadline):
        if target.is_file():
            return target
        try:
            run_worker({"op": "synth", "arch": arch, "quant": quant, "path": str(target), "force": force,
                        "seed": seed, **({"shape": base64.b64encode(shape).decode()} if shape else {})}, deadline or Deadline.after(math.inf), phase=f"synthesis of {arch} {quant}")
        except WorkerFailure as exc:
            for partial in target.parent.glob(f".{glob.escape(target.name)}.*.part"):  # the killed worker's
                partial.unlink(missing_ok=True)
            if exc.failure in ("timeout", "stopped"):
                raise
            raise (NoRoomError if exc.failure == "oom" else ModelError)(exc.message) from None
    return target


def synthetic_file(cache_dir: pathlib.Path, arch: str, quant: str) -> pathlib.Path:
    return cache_dir / "synthetic" / f"{arch}-{quant}.gguf"


def resolve(ref: str, quant: str | None, cache_dir: pathlib.Path, threads: int,
            deadline: Deadline | None = None) -> ResolvedModel:
    """A model file for `ref` (a path, or a real model's name) at `quant`, fetching or deriving it if needed."""
    if is_path(ref):
        path = pathlib.Path(ref)
        info = inspect(path, deadline=deadline)
        if quant is not None and parse_quant(quant) != info.quant:
            raise ModelError(f"{path.name} is {info.quant}, not {parse_quant(quant)}; "
                             f"derive it first with `fleetfit-agent models quantize {path} --to {parse_quant(quant)}`")
        return ResolvedModel(name=path.stem, path=path, origin="file")
    model = real_models.real_model(ref)
    quant = parse_quant(quant) if quant else model.quant
    target = real_models.model_file(cache_dir, model.name, quant)
    if not target.is_file():
        base = pull(model.name, cache_dir, deadline)
        if quant != model.quant:
            derive(base, quant, target, threads, deadline)
    return ResolvedModel(name=model.name, path=target, origin="real" if quant == model.quant else "derived")


# ---------------------------------------------------------------- a bounded cache

# Synthetic and derived files are remade on demand, so the cache keeps them only up to a limit: by default this
# fraction of the room the disk leaves it (free space plus what the cache holds now), so it never takes more than
# half of what it could. `--cache-limit` / FLEETFIT_CACHE_LIMIT set it: a size (20GB, 512MiB) or a percentage (25%).
DEFAULT_CACHE_FRACTION = 0.5
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%|b|kb|mb|gb|tb|kib|mib|gib|tib)\s*", re.IGNORECASE)
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}


def cache_bytes(cache_dir: pathlib.Path) -> int:
    """What the cache's model files take (models/ and synthetic/, as `models list` shows them)."""
    return sum(size for *_, size in cached_models(cache_dir))


def cache_limit_bytes(cache_dir: pathlib.Path, asked: str | None = None) -> int:
    """The cache's size limit: `asked` (a size with a unit, or a percentage of the room the disk leaves the cache),
    else DEFAULT_CACHE_FRACTION of that room; a one-line ModelError for text that is neither."""
    m = SIZE.fullmatch(asked or "")
    if asked and not m:
        raise ModelError(f"cache limit {asked[:40]!r} is not a size with a unit (e.g. 20GB, 512MiB) or a "
                         "percentage of the free disk (e.g. 25%)")
    if m and m.group(2) != "%":
        return int(float(m.group(1)) * UNITS[m.group(2).lower()])
    fraction = float(m.group(1)) / 100 if m else DEFAULT_CACHE_FRACTION
    cache_dir.mkdir(parents=True, exist_ok=True)
    return int(fraction * (shutil.disk_usage(cache_dir).free + cache_bytes(cache_dir)))


def check_under_limit(size: int, limit_bytes: int, what: str) -> None:
    """A one-line ModelError when one file (`what`: "the model", "the synthetic file") is larger than the cache's
    limit: eviction cannot make room for it, and writing it anyway would grow the cache past its limit."""
    if size > limit_bytes:
        raise ModelError(f"{what} ({size / 1e9:.2f} GB) is larger than this device's cache limit "
                         f"({limit_bytes / 1e9:.2f} GB): raise it with --cache-limit")


def is_shipped(name: str, quant: str) -> bool:
    """A real model as its package ships it (fetched, not derived): evicted only when it alone is over the limit."""
    model = real_models.REAL_MODELS.get(name)
    return model is not None and model.quant == quant


def _lock_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def in_use(cache_dir: pathlib.Path, path: str | os.PathLike | None):
    """Hold a shared lock on a cache file while a run reads it (eviction and `models rm` skip it), and mark it used
    now (its access time: the cache evicts least recently used first). A file outside the cache is left alone."""
    path = pathlib.Path(path) if path else None
    if path is None or pathlib.Path(cache_dir).resolve() not in path.resolve().parents:
        yield
        return
    with open(_lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not path.is_file():  # evicted between its making and this lock: rare, and said so
            raise ModelError(f"{path.name} was removed from the cache (evicted, or `models rm`) before it ran; "
                             "run again to make it anew")
        os.utime(path, (time.time(), path.stat().st_mtime))
        yield


def remove(path: pathlib.Path) -> bool:
    """Delete a cache file unless a run reads it or a process is making it (its lock is held): True when removed."""
    with open(_lock_path(path), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            path.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


def trim(cache_dir: pathlib.Path, limit_bytes: int, keep: set[pathlib.Path] = frozenset()
         ) -> list[tuple[str, str, pathlib.Path, int]]:
    """Evict files, least recently used first, until the cache holds at most `limit_bytes`: never one in use or in
    `keep` (the file the running job needs), and a shipped real model only once nothing else is left to evict.
    Returns what was evicted."""
    rows = cached_models(cache_dir)
    total = sum(size for *_, size in rows)

    def last_used(row) -> float:
        try:
            return row[2].stat().st_atime
        except OSError:
            return 0.0

    evicted = []
    for row in sorted(rows, key=lambda r: (is_shipped(r[0], r[1]), last_used(r))):
        if total <= limit_bytes:
            break
        if row[2] not in keep and remove(row[2]):
            total -= row[3]
            evicted.append(row)
    return evicted


# ---------------------------------------------------------------- one job at a time on a device

@contextlib.contextmanager
def busy(lock_path: pathlib.Path, what: str, wait: bool = True, stop=None, waiting=None):
    """Hold the device's run lock (`lock_path`) while one job or local profile runs, so that the agent's jobs and
    the owner's own `profile` never compete for its memory. Taken by whoever comes first; the other waits (or, with
    `wait` False, raises BusyError naming who holds it). `stop` (an event) ends a wait with BusyError; `waiting`
    is called once with the holder's description when this call has to wait."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another fleetfit-agent process"
                if not wait or (stop is not None and stop.is_set()):
                    raise BusyError(f"this device is busy: {holder}") from None
                if not told and waiting is not None:
                    waiting(holder)
                told = True
                if stop is not None:
                    stop.wait(0.2)
                else:
                    time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} runs {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # the kernel drops the lock however this process ends


class BusyError(ModelError):
    """Another process runs a job or profile on this device now; the message says which."""
