"""The coordinator's model store: GGUF files the operator added (fleetfit models add), content-addressed by SHA-256
in a directory of their own (beside the SQLite file by default; `serve --blob-dir` shares one between PostgreSQL
replicas), handed to devices in chunks.

    BLOB_DIR/blobs/sha256-<hex>        a complete, verified file (the only kind ever served)
    BLOB_DIR/blobs/sha256-<hex>.json   what its header says (size, architecture, type, shape)
    BLOB_DIR/uploads/sha256-<hex>.part an upload in progress: appended to at its end, never served
    BLOB_DIR/names/<name>.json         a name: its digest, who added it and when

Every file is written under a temporary name and renamed into place, so a coordinator killed at any moment leaves
either the old state or the new one; an upload's partial file stays and is resumed from its length. Memory is
bounded: an upload arrives in pieces of at most MAX_CHUNK_BYTES, a fetch is read in CHUNK_BYTES pieces, and the
digest is computed by reading the finished file, never by holding it.
"""

import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import time
import uuid

from fleetfit.models import job_bounds
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.v1 import fleetfit_pb2 as pb

MAX_CHUNK_BYTES = 4 << 20  # an upload's piece, and the most a fetch's message carries
CHUNK_BYTES = 1 << 20  # what a fetch sends per message (2 MiB: +20 MB coordinator RSS at 4 fetches, no faster here)
DIGEST = re.compile(r"[0-9a-f]{64}")
REF_PREFIX = "sha256:"
HIGH_PRECISIONS = ("F32", "F16", "BF16")  # a stored file of these types is quantized on the device to others


class StoreRefused(ValueError):
    """An upload, name or reference the store refuses; the message is one line."""


class NotStored(LookupError):
    """A name or digest the store does not hold."""


def default_blob_dir(db: str, state_dir: pathlib.Path) -> pathlib.Path:
    """Beside the SQLite file (`blobs/` in its directory); for PostgreSQL, in the state directory."""
    from fleetfit.coordinator.service.db import is_postgres_url

    return (state_dir if is_postgres_url(str(db)) else pathlib.Path(db).parent) / "blobs"


def checked_digest(text: str) -> str:
    digest = text.removeprefix(REF_PREFIX).lower()
    if not DIGEST.fullmatch(digest):
        raise StoreRefused(f"{text[:80]!r} is not a SHA-256 digest (64 hex digits)")
    return digest


def checked_name(name: str) -> str:
    """A name for a stored model: a model name jobs may carry, and never a catalogue or shipped model's."""
    try:
        job_bounds.check_model_name(name)
        if name.startswith("."):
            raise ValueError(f"model name {name[:80]!r} is not a model name (it may not start with '.')")
    except ValueError as exc:
        raise StoreRefused(str(exc)) from None
    if name in CATALOGUE or name.lower() in REAL_MODELS or name.lower() in {n.lower() for n in CATALOGUE}:
        raise StoreRefused(f"{name!r} is a catalogue model's name: give the file another (--name)")
    return name


def _write_json(path: pathlib.Path, record: dict) -> None:
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    part.write_text(json.dumps(record, sort_keys=True))
    os.replace(part, path)


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class ModelStore:
    root: pathlib.Path

    def __post_init__(self):
        self.root = pathlib.Path(self.root)
        for sub in ("blobs", "uploads", "names"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths

    def blob(self, digest: str) -> pathlib.Path:
        return self.root / "blobs" / f"sha256-{digest}"

    def _partial(self, digest: str) -> pathlib.Path:
        return self.root / "uploads" / f"sha256-{digest}.part"

    def _name_file(self, name: str) -> pathlib.Path:
        return self.root / "names" / f"{name}.json"

    # -- uploads

    def room_for(self, size_bytes: int, held_bytes: int = 0) -> None:
        """StoreRefused when the blob directory's disk cannot take `size_bytes` more than it holds of it."""
        free = shutil.disk_usage(self.root).free
        if size_bytes - held_bytes > free:
            raise StoreRefused(f"the model store's disk ({self.root}) has {free / 1e9:.1f} GB free; the file needs "
                               f"{(size_bytes - held_bytes) / 1e9:.1f} GB more")

    def received(self, digest: str) -> int:
        """Bytes of the upload of `digest` held: its size when stored, the partial file's length, or 0."""
        blob = self.blob(digest)
        if blob.is_file():
            return blob.stat().st_size
        try:
            return self._partial(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def put(self, request: pb.PutModelRequest, now: float | None = None) -> pb.PutModelResponse:
        """Take one piece of an upload (see PutModelRequest); the piece that completes it verifies and stores the
        file and names it. StoreRefused (one line) for anything the store does not take."""
        if len(request.data) > MAX_CHUNK_BYTES:
            raise StoreRefused(f"a piece of an upload carries at most {MAX_CHUNK_BYTES >> 20} MiB")
        if not request.sha256:
            self.room_for(request.size_bytes)
            return pb.PutModelResponse()
        digest, name = checked_digest(request.sha256), checked_name(request.name)
        self._check_name_free(name, digest)
        if self.blob(digest).is_file():  # already stored (this upload finished, or another name has the file)
            return self._named(digest, name, request.added_by, now)
        partial = self._partial(digest)
        with open(partial, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one writer of this upload at a time (replicas, a retried call)
            held = os.fstat(f.fileno()).st_size
            if request.offset != held:
                return pb.PutModelResponse(received_bytes=held)  # the client resumes from here
            if held + len(request.data) > request.size_bytes:
                raise StoreRefused(f"the upload's pieces exceed its size ({request.size_bytes} bytes)")
            if held == 0:
                self.room_for(request.size_bytes)
            f.write(request.data)
            f.flush()
            held += len(request.data)
            if held < request.size_bytes:
                return pb.PutModelResponse(received_bytes=held)
            os.fsync(f.fileno())
            self._finish(digest, partial)
        return self._named(digest, name, request.added_by, now)

    def add_file(self, path: pathlib.Path, name: str, added_by: str, digest: str | None = None) -> pb.StoredModel:
        """A file on the coordinator's own disk (a Hugging Face download) stored as `name`, verified against `digest`
        (the SHA-256 its source claims) when given, as an upload is."""
        name = checked_name(name)
        digest = digest or _sha256(path)
        self._check_name_free(name, digest)
        if not self.blob(digest).is_file():
            size = path.stat().st_size
            self.room_for(size)
            partial = self._partial(digest)
            with open(path, "rb") as src, open(partial, "wb") as dst:
                fcntl.flock(dst, fcntl.LOCK_EX)
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
                dst.flush()
                os.fsync(dst.fileno())
                self._finish(digest, partial)
        return self._named(digest, name, added_by, None).model

    def _finish(self, digest: str, partial: pathlib.Path) -> None:
        """Verify a complete upload (its digest, its GGUF header) and move it into blobs/; a bad one is removed."""
        found = _sha256(partial)
        if found != digest:
            partial.unlink(missing_ok=True)
            raise StoreRefused(f"the file's bytes hash to sha256:{found[:16]}..., not sha256:{digest[:16]}...: "
                               "it changed or was damaged on the way; nothing was stored (add it again)")
        try:
            info = inspect_gguf(partial)
        except ModelError as exc:
            partial.unlink(missing_ok=True)
            raise StoreRefused(f"not a usable GGUF file ({str(exc).replace(str(partial), 'upload')[:200]})") from None
        record = {"sha256": digest, "size_bytes": info.file_bytes, "architecture": info.architecture,
                  "quant": info.quant, "n_params": info.n_params}
        shape = _shape(partial)
        if shape is not None:
            from fleetfit.models.shapes import to_proto

            record["shape"] = to_proto(shape).SerializeToString().hex()
        _write_json(self.blob(digest).with_suffix(".json"), record)
        os.chmod(partial, 0o444)
        os.replace(partial, self.blob(digest))

    def _check_name_free(self, name: str, digest: str) -> None:
        held = _read_json(self._name_file(name))
        if held and held.get("sha256") != digest:
            raise StoreRefused(f"the name {name!r} is taken by sha256:{held.get('sha256', '?')[:16]}...: "
                               f"fleetfit models rm {name} first, or choose another --name")

    def _named(self, digest: str, name: str, added_by: str, now: float | None) -> pb.PutModelResponse:
        path = self._name_file(name)
        if not path.is_file():
            _write_json(path, {"name": name, "sha256": digest, "added_by": added_by[:200],
                               "added_unix_s": time.time() if now is None else now})
        return pb.PutModelResponse(received_bytes=self.blob(digest).stat().st_size, model=self.model(name))

    # -- what is stored

    def model(self, name: str) -> pb.StoredModel:
        named = _read_json(self._name_file(name))
        if named is None:
            raise NotStored(f"no stored model {name[:80]!r} (fleetfit models lists them)")
        digest = named["sha256"]
        meta = _read_json(self.blob(digest).with_suffix(".json")) or {}
        if not self.blob(digest).is_file():
            raise NotStored(f"the file of {name!r} (sha256:{digest[:16]}...) is missing from {self.root}")
        found = pb.StoredModel(name=name, sha256=digest, size_bytes=meta.get("size_bytes", 0),
                               architecture=meta.get("architecture", ""), quant=meta.get("quant", ""),
                               added_by=named.get("added_by", ""), added_unix_s=named.get("added_unix_s", 0.0))
        if meta.get("n_params") is not None:
            found.n_params = meta["n_params"]
        if meta.get("shape"):
            found.shape.ParseFromString(bytes.fromhex(meta["shape"]))
            found.shape.name = name
        return found

    def holds(self, name: str) -> bool:
        """Whether `name` is a stored model's name (False for anything that could not be one)."""
        try:
            return self._name_file(checked_name(name)).is_file()
        except StoreRefused:
            return False

    def models(self) -> list[pb.StoredModel]:
        found = []
        for path in sorted((self.root / "names").glob("*.json"), key=lambda p: p.stem):
            try:
                found.append(self.model(path.stem))
            except (NotStored, KeyError):
                continue
        return found

    def find(self, ref: str) -> pb.StoredModel:
        """The stored model a campaign names: by name, or `sha256:<hex>` (its first name). NotStored otherwise."""
        if ref.startswith(REF_PREFIX):
            digest = checked_digest(ref)
            for model in self.models():
                if model.sha256 == digest:
                    return model
            raise NotStored(f"no stored model has {ref[:80]}")
        return self.model(ref)

    def remove(self, name: str) -> bool:
        """Forget `name`; the file goes once no name refers to it. True when the file was removed."""
        path = self._name_file(name)
        named = _read_json(path)
        if named is None:
            raise NotStored(f"no stored model {name[:80]!r}")
        path.unlink(missing_ok=True)
        digest = named.get("sha256", "")
        if any(_read_json(p) and _read_json(p).get("sha256") == digest for p in (self.root / "names").glob("*.json")):
            return False
        self.blob(digest).unlink(missing_ok=True)
        self.blob(digest).with_suffix(".json").unlink(missing_ok=True)
        return True

    def open_blob(self, digest: str):
        """A complete stored file opened for reading, and its size; NotStored for any other digest."""
        digest = checked_digest(digest)
        try:
            f = open(self.blob(digest), "rb")
        except FileNotFoundError:
            raise NotStored(f"no stored model has sha256:{digest[:16]}... (removed with fleetfit models rm?)") from None
        return f, os.fstat(f.fileno()).st_size


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _shape(path: pathlib.Path):
    """The Architecture in the file's header, or None for a family fleetfit does not model."""
    from fleetfit.models.shapes import from_gguf

    try:
        return from_gguf(path)
    except (ModelError, TypeError, ValueError, OverflowError):
        return None


def attach(store: "ModelStore | None", spec: pb.CampaignSpec) -> pb.CampaignSpec:
    """The campaign with its stored models resolved: each name (or sha256:...) the store holds becomes the stored
    name, with its StoredModel in `stored` and its shape in `shapes` (so tables and fit know the architecture).
    Catalogue and shipped names are left alone (the store never takes them)."""
    out = pb.CampaignSpec()
    out.CopyFrom(spec)
    if store is None:
        return out
    models, stored = [], {}  # never what the caller put in `stored`: only what this store holds
    for ref in out.models:
        if not ref.startswith(REF_PREFIX) and not store.holds(ref):  # a catalogue or shipped name, or unknown
            models.append(ref)
            continue
        try:
            model = store.find(ref)
        except StoreRefused as exc:
            raise ValueError(str(exc)) from None
        except NotStored as exc:
            raise ValueError(str(exc)) from None
        models.append(model.name)
        stored.setdefault(model.name, model)
    del out.models[:]
    out.models.extend(dict.fromkeys(models))
    del out.stored[:]
    out.stored.extend(stored.values())
    for model in stored.values():
        if model.HasField("shape") and not any(s.name == model.name for s in out.shapes):
            out.shapes.append(model.shape)
    return out


def stored_refusal(model: pb.StoredModel, precision: str) -> str | None:
    """Why a stored file cannot be run at `precision` (llama.cpp types): its own type runs as it is; from F32, F16
    or BF16 the device derives others with llama.cpp's quantizer; a quantized file is never requantized."""
    if precision == model.quant or model.quant in HIGH_PRECISIONS:
        return None
    return (f"the stored file is {model.quant}: it runs at {model.quant}; other precisions are derived only from an "
            f"{'/'.join(HIGH_PRECISIONS)} file")
