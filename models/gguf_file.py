"""Reading what a GGUF file is, and refusing files that are not GGUF, cut short or crafted, before a backend loads them.

Every model file is opened here (`open_gguf`). The header is walked by a small bounded parser (GGUF v2/v3:
magic, version, tensor and metadata counts, the metadata entries, the tensor table) that checks each count
and length against the bytes left in the file and against the header's own bounds (bytes walked, elements
looped over, bytes kept) before reading or looping on it, so a 100-byte file that declares 2^40 array elements,
or a few-KB file over a sparse hole of 1 TiB, is refused at once. The gguf package's GGUFReader is not used for the header:
it builds a numpy view per array element (about 8 µs and 700 bytes each, so a tokenizer of a million
entries costs 8 s and 700 MB), which no file-size check can make cheap. Arrays and long strings are checked
and skipped, not loaded; no caller needs them. Errors are one line and never quote the file's bytes.
"""

import dataclasses
import errno
import hashlib
import math
import os
import pathlib
import stat
import struct

from fleetfit.models.errors import ModelError
from fleetfit.models.quants import quant_of_ftype

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp and gguf refuse more
MAX_ARRAY_DEPTH = 2  # an array of arrays at most (llama.cpp reads no nested arrays at all)
# Beyond what any real model has (a few dozen metadata keys; ~1M tokenizer strings for a 262k vocabulary with
# merges; ~30k tensors for an MoE with unmerged experts), so that even a large file bounds the work and memory.
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 17
MAX_KEPT_STRING = 1 << 16  # longer string values (an embedded tokenizer.json) are skipped, not loaded
# The header (metadata and tensor table) as a whole. Measured: SmolLM2's (49k tokens and 49k merges) is 1.8 MB,
# ~18 bytes per string, so Llama 3's 128k tokens and 280k merges are ~8 MB and a 262k vocabulary with a million
# merges ~25 MB. Past these bounds a header is crafted, whatever the file's (possibly sparse) size.
MAX_HEADER_BYTES = 64 << 20
MAX_ITEMS = 1 << 21  # strings and nested arrays, looped over one by one (~1 µs each): ~2 s at most
MAX_KEPT_BYTES = 16 << 20  # keys, kept string values and tensor names held in memory (real files: < 2 MB)
# A writer pads the last tensor to the alignment; more after it is not part of the model, and would only be
# hashed (a model copied and truncated to 1 TB, all of it a hole, is refused here instead of hashed for hours).
MAX_TRAILING_BYTES = 16 << 20
CHECK_EVERY = 1 << 14  # loop steps between calls of the caller's `check` (a job's deadline and stop request)

# GGUF value types (gguf.GGUFValueType) -> struct format of a scalar.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_UINT32, _STRING, _ARRAY = 4, 8, 9


@dataclasses.dataclass(frozen=True)
class GgufInfo:
    path: pathlib.Path
    file_bytes: int
    architecture: str
    name: str
    quant: str
    n_params: int
    n_tensors: int


@dataclasses.dataclass(frozen=True)
class GgufField:
    """One metadata entry: `value` is the scalar or string (None for arrays and strings over MAX_KEPT_STRING)."""

    type: int
    value: object = None

    def contents(self):  # the name GGUFReader's fields use
        return self.value


@dataclasses.dataclass(frozen=True)
class GgufFile:
    """A validated GGUF: `fields` by key and `tensors` as gguf.ReaderTensor records (with `data` mapped)."""

    path: pathlib.Path
    file_bytes: int
    fields: dict[str, GgufField]
    tensors: list
    infos: list = dataclasses.field(default_factory=list)  # (name, type, dims, offset) of each tensor


_STAT_ERRORS = {errno.ELOOP: "a symlink loop", errno.EACCES: "permission denied",
                errno.ENOTDIR: "a part of the path is not a directory", errno.ENAMETOOLONG: "the name is too long"}


def _kind(mode: int) -> str | None:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: pathlib.Path) -> tuple:
    """(binary file, size) of a regular, non-empty file; a precise ModelError otherwise. Never blocks: the type
    is checked with stat before opening (a FIFO or a device is never opened) and again on the open descriptor."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelError(f"model file {'is a broken symlink' if os.path.islink(path) else 'not found'}: {path}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file ({_STAT_ERRORS.get(exc.errno, exc.strerror)}): {path}") from None
    if kind := _kind(st.st_mode):
        raise ModelError(f"model file is {kind}, not a GGUF file: {path}")
    real = os.path.realpath(path)
    if real.startswith(("/proc/", "/sys/")):
        raise ModelError(f"model file is a kernel file under /{real.split('/')[1]}, not a GGUF file: {path}")
    if st.st_size == 0:
        raise ModelError(f"model file is empty (0 bytes): {path}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelError(f"cannot read model file ({_STAT_ERRORS.get(exc.errno, exc.strerror)}): {path}") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
        f.close()
        raise ModelError(f"model file changed while being opened: {path}")
    return f, st.st_size


class _Walker:
    """Reads the header front to back; every length is checked against what is left before it is used."""

    def __init__(self, f, size: int, path: pathlib.Path, check=None):
        self.f, self.size, self.path, self.check = f, size, path, check
        self.pos = self.items = self.kept = self.steps = 0

    def tick(self) -> None:
        """One more step of a loop (an entry, a tensor, an element): the caller's `check` every CHECK_EVERY steps
        of the whole walk, however the steps are split between entries, arrays and nesting."""
        self.steps += 1
        if self.check is not None and self.steps % CHECK_EVERY == 0:
            self.check()

    def fail(self, what: str):
        return ModelError(f"corrupt GGUF: {what}: {self.path}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise ModelError(f"truncated GGUF: {what} runs past the end of the file ({self.size} bytes): {self.path}")
        if n > MAX_HEADER_BYTES - self.pos:
            raise self.fail(f"{what} makes the header larger than {MAX_HEADER_BYTES >> 20} MiB")

    def count(self, n: int, what: str) -> None:
        """`n` more strings or arrays to loop over: refused past MAX_ITEMS before the loop starts."""
        self.items += n
        if self.items > MAX_ITEMS:
            raise self.fail(f"{what} takes the header past {MAX_ITEMS} strings and arrays")

    def keep(self, n: int, what: str) -> None:
        self.kept += n
        if self.kept > MAX_KEPT_BYTES:
            raise self.fail(f"{what} takes the header's keys, names and kept strings past {MAX_KEPT_BYTES >> 20} MiB")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise ModelError(f"truncated GGUF: the file shrank while being read: {self.path}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str, keep: bool = True) -> bytes | None:
        self.count(1, what)
        (n,) = self.unpack("Q", f"the length of {what}")
        if keep and n <= MAX_KEPT_STRING:
            self.keep(n, what)
            return self.take(n, what)
        self.skip(n, what)
        return None

    def name(self, what: str) -> str:
        """A key or tensor name: UTF-8, kept."""
        (n,) = self.unpack("Q", f"the length of {what}")
        if n > MAX_KEPT_STRING:
            raise self.fail(f"{what} is longer than {MAX_KEPT_STRING} bytes")
        self.keep(n, what)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0, keep: bool = True):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], what)[0] if keep else self.skip(struct.calcsize(_SCALAR[vtype]), what)
        if vtype == _STRING:
            data = self.string(what, keep)
            return None if data is None else data.decode("utf-8", errors="replace")
        if vtype != _ARRAY:
            raise self.fail(f"{what} has an unknown value type")
        if depth >= MAX_ARRAY_DEPTH:
            raise self.fail(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        element, count = self.unpack("IQ", f"the array header of {what}")
        if element in _SCALAR:  # fixed size: one check, one seek
            self.skip(count * struct.calcsize(_SCALAR[element]), f"the elements of {what}")
        elif element == _STRING:  # a tokenizer: a tight loop over lengths, no string is read
            self.need(count * 8, f"the elements of {what}")
            self.count(count, f"the elements of {what}")
            for _ in range(count):
                self.tick()
                (n,) = self.unpack("Q", f"an element of {what}")
                self.skip(n, f"an element of {what}")
        elif element == _ARRAY:
            self.need(count * 12, f"the elements of {what}")  # each at least an element type and a count
            self.count(count, f"the elements of {what}")
            for _ in range(count):
                self.tick()
                self.value(element, f"an element of {what}", depth + 1, keep=False)
        else:
            raise self.fail(f"{what} has an unknown element type")
        return None

    def header(self) -> tuple[dict[str, GgufField], list[tuple], int]:
        """(fields, tensor infos (name, type, dims, offset), start of the tensor data)."""
        if self.take(min(4, self.size), "the magic") != GGUF_MAGIC:
            raise ModelError(f"not a GGUF file: {self.path}")
        (version,) = self.unpack("I", "the version")
        if version not in VERSIONS:
            big_endian = version & 0xFFFF == 0  # a byte-swapped small version
            raise ModelError(f"{'big-endian GGUF' if big_endian else 'this GGUF version'} is not supported "
                             f"(fleetfit reads little-endian GGUF versions 2 and 3): {self.path}")
        n_tensors, n_kv = self.unpack("QQ", "the tensor and metadata counts")
        if n_kv > MAX_KV or n_kv * 13 > self.size - self.pos:  # key length 8, type 4, a value of at least 1
            raise self.fail("the metadata count is larger than the file can hold")
        if n_tensors > MAX_TENSORS or n_tensors * 24 > self.size - self.pos:  # name length 8, n_dims, type, offset
            raise self.fail("the tensor count is larger than the file can hold")
        fields = {}
        for i in range(n_kv):
            self.tick()
            key = self.name(f"metadata key {i}")
            if key in fields:
                raise self.fail(f"metadata key {i} repeats an earlier key")
            (vtype,) = self.unpack("I", f"the type of metadata entry {i}")
            fields[key] = GgufField(vtype, self.value(vtype, f"metadata entry {i}"))
        alignment = fields.get("general.alignment", GgufField(_UINT32, DEFAULT_ALIGNMENT))
        if alignment.type != _UINT32 or alignment.value <= 0 or alignment.value & (alignment.value - 1):
            raise self.fail("general.alignment is not a power of two")

        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        infos, names, data_bytes = [], set(), 0
        for i in range(n_tensors):
            self.tick()
            name = self.name(f"the name of tensor {i}")
            if name in names:
                raise self.fail(f"tensor {i} repeats an earlier tensor's name")
            names.add(name)
            (n_dims,) = self.unpack("I", f"the dimension count of tensor {i}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.fail(f"tensor {i} does not have 1 to {MAX_DIMS} dimensions")
            dims = self.unpack(f"{n_dims}Q", f"the dimensions of tensor {i}")
            raw_type, offset = self.unpack("IQ", f"the type and offset of tensor {i}")
            try:
                ggml_type = GGMLQuantizationType(raw_type)
                weights, type_bytes = GGML_QUANT_SIZES[ggml_type]
            except (ValueError, KeyError):
                raise self.fail(f"tensor {i} has an unknown type") from None
            n_elements = math.prod(dims)
            if dims[0] % weights:
                raise self.fail(f"the rows of tensor {i} are not a whole number of blocks")
            if n_elements * type_bytes // weights > self.size or offset > self.size:
                raise ModelError(f"truncated GGUF: the data of tensor {i} runs past the end of the file "
                                 f"({self.size} bytes): {self.path}")
            data_bytes = max(data_bytes, offset + n_elements * type_bytes // weights)
            infos.append((name, ggml_type, dims, offset))
        data_start = -(-self.pos // alignment.value) * alignment.value
        if data_bytes and data_start + data_bytes > self.size:
            raise ModelError(f"truncated GGUF: the tensor data runs past the end of the file ({self.size} bytes): "
                             f"{self.path}")
        if self.size - (data_start + data_bytes) > MAX_TRAILING_BYTES:
            raise self.fail(f"the file runs more than {MAX_TRAILING_BYTES >> 20} MiB past the end of its tensor data "
                            f"({self.size} bytes in all)")
        return fields, infos, data_start


def open_gguf(path: pathlib.Path | str, check=None, views: bool = True) -> GgufFile:
    """Validate the header (bounded in time and memory) and map the tensors; ModelError for anything wrong.
    `check`: called every so often during the walk (a job's deadline: it raises to end the walk). Without `views`
    no tensor is mapped (`tensors` is empty; `infos` is what there is to know of them)."""
    path = pathlib.Path(path)
    f, size = open_regular(path)
    with f:
        fields, infos, data_start = _Walker(f, size, path, check).header()
        if not infos or not views:
            return GgufFile(path, size, fields, [], infos)
        import numpy as np
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, ReaderTensor
        from gguf.quants import quant_shape_to_byte_shape

        data = np.memmap(f, mode="r")  # the descriptor just validated, not the path again
    typed = {T.F16: np.float16, T.F32: np.float32, T.F64: np.float64, T.I8: np.int8, T.I16: np.int16,
             T.I32: np.int32, T.I64: np.int64}
    tensors = []
    for name, ggml_type, dims, offset in infos:  # as GGUFReader._build_tensors lays them out
        n_elements = math.prod(dims)
        weights, type_bytes = GGML_QUANT_SIZES[ggml_type]
        n_bytes = n_elements * type_bytes // weights
        start = data_start + offset
        shape = tuple(reversed(dims))
        if ggml_type in typed:
            view = data[start:start + n_bytes].view(typed[ggml_type]).reshape(shape)
        else:
            view = data[start:start + n_bytes].reshape(quant_shape_to_byte_shape(shape, ggml_type))
        tensors.append(ReaderTensor(name=name, tensor_type=ggml_type, shape=np.array(dims, dtype=np.uint64),
                                    n_elements=n_elements, n_bytes=n_bytes, data_offset=start, data=view, field=None))
    return GgufFile(path, size, fields, tensors, infos)


def inspect_gguf(path: pathlib.Path | str, check=None) -> GgufInfo:
    """What a GGUF file holds; ModelError for a missing, special, non-GGUF, truncated or crafted file."""
    gguf = open_gguf(path, check, views=False)  # a view per tensor would cost ~1 KB each, for nothing here

    def value(key: str):
        field = gguf.fields.get(key)
        return None if field is None else field.value

    ftype = value("general.file_type")
    return GgufInfo(
        path=gguf.path,
        file_bytes=gguf.file_bytes,
        architecture=str(value("general.architecture") or "unknown"),
        name=str(value("general.name") or gguf.path.stem),
        quant=quant_of_ftype(int(ftype)) if isinstance(ftype, int) else "unknown",
        n_params=sum(math.prod(dims) for _, _, dims, _ in gguf.infos),
        n_tensors=len(gguf.infos),
    )


def sha256_of(path: pathlib.Path, chunk_bytes: int = 1 << 20, check=None) -> str:
    """The file's SHA-256. `check` is called before each chunk: a job's deadline and stop request end the hashing
    of a file of any size (a terabyte, sparse or not, takes minutes to read)."""
    digest = hashlib.sha256()
    f, _ = open_regular(pathlib.Path(path))
    with f:
        while True:
            if check is not None:
                check()
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()
