"""Reading what a GGUF file is, and refusing files that are not GGUF or are cut short, before a backend loads them."""

import dataclasses
import hashlib
import pathlib

from fleetfit.models.errors import ModelError
from fleetfit.models.quants import quant_of_ftype

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class GgufInfo:
    path: pathlib.Path
    file_bytes: int
    architecture: str
    name: str
    quant: str
    n_params: int
    n_tensors: int


def _field_value(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def inspect_gguf(path: pathlib.Path | str) -> GgufInfo:
    """Parse the header and tensor table; raise ModelError for a missing, non-GGUF or truncated file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    file_bytes = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}): {path}")

    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, ... on damaged headers
        raise ModelError(f"corrupt or truncated GGUF ({type(exc).__name__}: {exc}): {path}") from None
    end_of_data = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end_of_data > file_bytes:
        raise ModelError(
            f"truncated GGUF: tensor data needs {end_of_data} bytes, the file has {file_bytes}: {path}"
        )
    ftype = _field_value(reader, "general.file_type")
    return GgufInfo(
        path=path,
        file_bytes=file_bytes,
        architecture=str(_field_value(reader, "general.architecture") or "unknown"),
        name=str(_field_value(reader, "general.name") or path.stem),
        quant=quant_of_ftype(int(ftype)) if ftype is not None else "unknown",
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        n_tensors=len(reader.tensors),
    )


def sha256_of(path: pathlib.Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
