"""A stored model (the coordinator's model store, `fleetfit models add`) fetched into this device's cache over the
agent's own authenticated channel: AgentService.FetchModel streams the file from an offset, so a cut transfer (the
coordinator restarted, this agent killed) resumes where it stopped. The bytes go to a resumable partial file
beside the target under the target's lock (model_cache.exclusive); the SHA-256 is checked before the file is
renamed into place, so a damaged or altered file is never used. Free disk and the cache's limit are checked first.
The coordinator serves a device only the files its leased jobs name. `fleetfit-agent models pull` (pull) fetches a
stored model by name the same way, or downloads a Hugging Face file here and adopts it under its pinned SHA-256.

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
        model_cache.check_under_limit(size, limit_bytes, "the model")
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


def _verified(partial: pathlib.Path, digest: str, found: str, name: str, deadline: Deadline,
              source: str = "the job's") -> pathlib.Path:
    """The complete partial file renamed into place once its SHA-256 (`found`) is `digest` (`source`'s) and its header
    reads."""
    if found != digest:
        partial.unlink(missing_ok=True)
        raise ModelError(f"the fetched model hashes to sha256:{found[:16]}..., not {source} "
                         f"sha256:{digest[:16]}...: removed, never used")
    info = model_cache.inspect(partial, job=True, deadline=deadline)
    target = partial.parent / f"{model_cache.checked_name(name)}-{info.quant}.gguf"
    os.chmod(partial, 0o444)
    os.replace(partial, target)
    os.utime(target, (time.time(), time.time()))
    return target


def adopt(source: pathlib.Path, digest: str | None, name: str, cache_dir: pathlib.Path, deadline: Deadline,
          limit_bytes: int | None = None) -> Fetched:
    """A file downloaded into the cache by another client (huggingface_hub) moved in as the stored file of its
    SHA-256, under the same lock and check as a fetch: `digest` is the SHA-256 its source pinned (None: the file's
    own). ModelError (one line) for bytes that do not hash to it (the file is removed then)."""
    source = source.resolve()  # huggingface_hub's snapshot names are links to its blobs
    found = _Hashed.of(source, deadline).hexdigest()
    digest = digest or found
    directory = stored_dir(cache_dir, digest)
    with model_cache.exclusive(directory / "fetch", deadline):
        held = stored_file(cache_dir, digest)
        if held is not None:
            return Fetched(held, 0, 0)
        size = source.stat().st_size
        _check_room(cache_dir, size, size, limit_bytes)
        partial = directory / ".fetch.resume"
        shutil.move(source, partial)  # complete: it replaces any cut fetch's bytes
        target = _verified(partial, digest, found, name, deadline, "the hub's")
    return Fetched(target, size, 0)


def pull(name: str, cache_dir: pathlib.Path, identity=None, operator_token: str | None = None,
         limit_bytes: int | None = None, deadline: Deadline | None = None) -> Fetched:
    """`fleetfit-agent models pull` of a model that is not shipped: `hf:ORG/REPO/FILE.gguf[@REV]` downloaded here
    from the hub (or HF_ENDPOINT's mirror) at its pinned commit and SHA-256, or a stored model's NAME fetched from
    the coordinator `identity` names (over FetchModel: as this device, only a model its leased job names; with the
    operator's token, any). ModelError (one line) for a bad name, an unreachable source or a refusal."""
    from fleetfit.models import hf_files, job_bounds
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    deadline = deadline or Deadline.after(7 * 24 * 3600)
    if hf_files.is_hf_ref(name):
        ref = hf_files.parse(name)
        downloads = pathlib.Path(cache_dir) / "hf-cache"
        found = hf_files.download(name, downloads, needs="this device")  # a cut one stays: the next try resumes it
        try:
            return adopt(found.path, found.sha256, model_cache.checked_name(ref.stem), cache_dir, deadline,
                         limit_bytes)
        finally:  # adopted or refused, the download is done with
            shutil.rmtree(downloads, ignore_errors=True)
    try:
        job_bounds.check_model_name(name)
    except ValueError as exc:
        raise ModelError(f"{exc}; a Hugging Face file is hf:ORG/REPO/FILE.gguf[@REV]") from None
    if identity is None:
        raise ModelError(f"{name!r} is neither a shipped model nor hf:ORG/REPO/FILE.gguf, and this device is not "
                         "enrolled to fetch it from a coordinator's store (fleetfit-agent join)")
    cert = (identity.client_cert_pem.encode(), identity.client_key_pem.encode()) if identity.client_cert_pem else None
    channel = identity.connect() if operator_token is None else \
        connect(identity.coordinator, token=operator_token, client_cert=cert,
                ca_pem=identity.ca_pem.encode() if identity.ca_pem else None)
    device_id = "" if operator_token is not None else identity.device_id
    with channel:
        stub = pb_grpc.AgentServiceStub(channel)
        answers = stub.FetchModel(pb.FetchModelRequest(device_id=device_id, name=name), timeout=30)
        try:
            answer = next(answers, pb.ModelChunk())  # one message: the digest (fetch checks it is one)
        except grpc.RpcError as exc:
            raise ModelError(f"{identity.coordinator} gives no model {name!r}: {exc.code().name}: "
                             f"{(exc.details() or '').strip()[:300]}") from None
        finally:
            answers.cancel()
        return fetch(stub, device_id, pb.ModelRef(name=name, sha256=answer.sha256), cache_dir, deadline, limit_bytes)
