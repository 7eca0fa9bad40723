"""A stored model (the coordinator's model store, `fleetfit models add`) fetched into this device's cache over the
agent's own authenticated channel: AgentService.FetchModel streams the file from an offset, so a cut transfer (the
coordinator restarted, this agent killed) resumes where it stopped. The bytes go to a resumable partial file
beside the target under the target's lock (model_cache.exclusive); the SHA-256 is checked before the file is
renamed into place, so a damaged or altered file is never used. Free disk and the cache's limit are checked first.

    CACHE/stored/<sha256>/<name>-<TYPE>.gguf            the stored file, verified
    CACHE/stored/<sha256>/derived/<name>-<TYPE>.gguf    precisions derived from it (an F16/BF16/F32 file)
"""

import dataclasses
import hashlib
import logging
import os
import pathlib
import shutil
import time

import grpc

from fleetfit.agent import model_cache
from fleetfit.agent.isolation import Deadline
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb

log = logging.getLogger("fleetfit.agent")
# The coordinator away, restarting or busy: the fetch waits for it as long as the job's deadline allows.
COORDINATOR_AWAY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
# A failure of the coordinator's own (a bug answering every try alike) ends the fetch after this many tries in a row.
RETRYABLE = COORDINATOR_AWAY | {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MAX_TRIES_WITHOUT_PROGRESS = 6
HIGH_PRECISIONS = ("F32", "F16", "BF16")  # a stored file of these types is quantized here to others


@dataclasses.dataclass(frozen=True)
class Fetched:
    path: pathlib.Path
    received_bytes: int  # over the network by this call (0: already in the cache)
    resumed_from: int  # bytes already held from an earlier, cut transfer


def stored_dir(cache_dir: pathlib.Path, digest: str) -> pathlib.Path:
    return pathlib.Path(cache_dir) / "stored" / digest


def stored_file(cache_dir: pathlib.Path, digest: str) -> pathlib.Path | None:
    """The verified file of `digest` in the cache, or None."""
    found = sorted(stored_dir(cache_dir, digest).glob("*.gguf")) if len(digest) == 64 and digest.isalnum() else []
    return found[0] if found else None


def derived_file(stored: pathlib.Path, quant: str) -> pathlib.Path:
    name = stored.stem.rpartition("-")[0]
    return stored.parent / "derived" / f"{name}-{quant}.gguf"


def fetch(stub, device_id: str, model: pb.ModelRef, cache_dir: pathlib.Path, deadline: Deadline,
          limit_bytes: int | None = None) -> Fetched:
    """The stored file `model.sha256` in the cache, fetched if it is not there. ModelError (one line) for a file
    the disk or the cache limit cannot take, a digest the coordinator does not hold, or bytes that do not hash to
    the digest (the partial file is removed then); WorkerFailure when the job's deadline or stop ends it. A
    coordinator away (restarting, unavailable) is waited for, within the job's deadline."""
    digest = model.sha256
    if not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ModelError(f"the job's model digest {digest[:80]!r} is not a SHA-256 (64 lower-case hex digits)")
    directory = stored_dir(cache_dir, digest)
    lock_target = directory / "fetch"
    partial = directory / ".fetch.resume"  # not a `.<name>.*.part`: exclusive() keeps it for the next try
    with model_cache.exclusive(lock_target, deadline):
        found = stored_file(cache_dir, digest)
        if found is not None:
            return Fetched(found, 0, 0)
        held = partial.stat().st_size if partial.exists() else 0
        resumed_from, received, tries, size, hashed = held, 0, 0, None, _Hashed()
        while True:
            deadline.check("model fetch")
            held = partial.stat().st_size if partial.exists() else 0  # what reached the disk, whatever was cut
            if hashed.count != held:  # bytes from an earlier process (or an unfinished write): hashed from the disk
                hashed = _Hashed.of(partial, deadline)
            try:
                with open(partial, "ab") as f:
                    for chunk in stub.FetchModel(pb.FetchModelRequest(device_id=device_id, sha256=digest, offset=held),
                                                 timeout=max(min(deadline.remaining_s(), 7 * 24 * 3600), 1.0)):
                        if size is None:
                            size = chunk.size_bytes
                            _check_room(cache_dir, size, held, limit_bytes)
                        if chunk.offset != held or held + len(chunk.data) > size:
                            raise ModelError("the coordinator sent a chunk out of order: fetch refused")
                        f.write(chunk.data)
                        hashed.update(chunk.data)  # as it arrives: the file is not read again to check it
                        held += len(chunk.data)
                        received += len(chunk.data)
                        deadline.check("model fetch")
                if size is not None and held >= size:
                    break
                raise ModelError("the coordinator ended the transfer early")
            except OSError as exc:  # the disk filled (or failed) under the transfer: what was written stays
                raise ModelError(f"writing the fetched model to {cache_dir} failed: {exc.strerror}; {held} bytes kept "
                                 "for the next try") from None
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise ModelError(f"the coordinator holds no model sha256:{digest[:16]}... "
                                     f"({exc.details()})") from None
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # held more than the file: start again
                    partial.unlink(missing_ok=True)
                    held = 0
                elif exc.code() not in RETRYABLE:
                    raise ModelError(f"fetching sha256:{digest[:16]}... failed: {exc.code().name}: "
                                     f"{exc.details()}") from None
                tries = 0 if received else tries + 1
                if tries >= MAX_TRIES_WITHOUT_PROGRESS and exc.code() not in COORDINATOR_AWAY:
                    raise ModelError(f"fetching sha256:{digest[:16]}... made no progress in {tries} tries "
                                     f"({exc.code().name}): {held} bytes kept for the next try") from None
                log.info("fetch of sha256:%s... cut at %d bytes (%s): resuming", digest[:16], held, exc.code().name)
                deadline.wait(min(0.5 * 2 ** min(tries, 8), 10.0), "model fetch")
        target = _verified(partial, digest, hashed.hexdigest(), model.name or "model", deadline)
    log.info("fetched %s (sha256:%s..., %d bytes received, resumed from %d)", target.name, digest[:16], received,
             resumed_from)
    return Fetched(target, received, resumed_from)


def _check_room(cache_dir: pathlib.Path, size: int, held: int, limit_bytes: int | None) -> None:
    """ModelError when the disk or the cache limit cannot take the file (the cache is trimmed for it first)."""
    if limit_bytes is not None:
        if size > limit_bytes:
            raise ModelError(f"the model ({size / 1e9:.2f} GB) is larger than this device's cache limit "
                             f"({limit_bytes / 1e9:.2f} GB): raise it with --cache-limit")
        model_cache.trim(cache_dir, max(limit_bytes - size, 0))
    free = shutil.disk_usage(cache_dir).free
    if size - held > free:
        raise ModelError(f"not enough disk for the model: {(size - held) / 1e9:.2f} GB more needed, "
                         f"{free / 1e9:.2f} GB free in {cache_dir}")


class _Hashed:
    """A running SHA-256 and how many bytes it has seen."""

    def __init__(self):
        self.sha, self.count = hashlib.sha256(), 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    @classmethod
    def of(cls, path: pathlib.Path, deadline: Deadline) -> "_Hashed":
        hashed = cls()
        if path.exists():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    hashed.update(chunk)
                    deadline.check("check of the fetched model's SHA-256")
        return hashed


def _verified(partial: pathlib.Path, digest: str, found: str, name: str, deadline: Deadline) -> pathlib.Path:
    """The complete partial file renamed into place once its SHA-256 (`found`) is `digest` and its header reads."""
    if found != digest:
        partial.unlink(missing_ok=True)
        raise ModelError(f"the fetched model hashes to sha256:{found[:16]}..., not the job's "
                         f"sha256:{digest[:16]}...: removed, never used")
    info = model_cache.inspect(partial, job=True, deadline=deadline)
    target = partial.parent / f"{model_cache.checked_name(name)}-{info.quant}.gguf"
    os.chmod(partial, 0o444)
    os.replace(partial, target)
    os.utime(target, (time.time(), time.time()))
    return target
