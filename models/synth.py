"""Synthetic GGUF files: a catalogued architecture's exact tensors with random weights, streamed to disk.

The speed and memory of dense inference do not depend on the values of the weights, so a file with the
real tensor names, shapes and types (the mix llama.cpp's quantizer would write, see quant_sizes.py) measures
like the real model. Weights are written as valid blocks with numpy, never quantized element by element:
random bytes whose scale fields are overwritten with a small fp16 value, so every weight is finite and
small (float types: random sign and mantissa under a fixed small exponent). Norm weights are 1, biases 0.
A 32 MiB pool of random blocks per tensor type is made once per file, and tensors are written from it in
slices that start at random block offsets, so memory stays flat and the disk, not the generator, sets the
speed. The header (metadata, a placeholder tokenizer, the tensor table) is built by the gguf package's
GGUFWriter in memory, so the predicted file size is exact.

The tokenizer is a SentencePiece-type ("llama") vocabulary of the architecture's size: <unk>, <s>, </s>,
the 256 byte tokens, <|endoftext|>, then placeholder tokens; llama.cpp needs a vocabulary to load a model, and the
harness feeds token ids, never text. Llama 3.x's rope_freqs.weight (rope scaling for long contexts) is
left out: llama.cpp treats it as optional and it does not change speed or memory at short contexts.
"""

import dataclasses
import io
import os
import pathlib
import shutil
import uuid

import psutil

import numpy as np

from fleetfit.models.catalogue import Architecture, architecture, tensors
from fleetfit.models.errors import ModelError, NoRoomError
from fleetfit.models.quant_sizes import block_size, supported_quant, tensor_bytes, tensor_type
from fleetfit.models.quants import llama_ftype

ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT: each tensor's data starts on a multiple of this
POOL_BYTES = 32 << 20
RUNTIME_OVERHEAD_BYTES = 100 << 20  # llama.cpp's own allocations besides weights, KV cache and compute buffers
N_SPECIAL_TOKENS = 3 + 256 + 1  # <unk>, <s>, </s>, the byte tokens, <|endoftext|> (llama.cpp's Phi-3 vocab needs it)

# fp16 scale fields per block type (offset in the block, value): the block layouts of ggml-common.h.
# Values keep every dequantized weight well under 1 (checked against gguf.quants.dequantize in the tests).
_SCALES = {
    "Q8_0": [(0, 2.0**-12)],  # d, int8[32]: w = d*q
    "Q4_0": [(0, 2.0**-8)],  # d, nibbles[16]: w = d*(q-8)
    "Q4_1": [(0, 2.0**-8), (2, -(2.0**-5))],  # d, m, nibbles[16]: w = d*q + m
    "Q5_0": [(0, 2.0**-9)],  # d, qh[4], qs[16]: w = d*(q-16)
    "Q5_1": [(0, 2.0**-9), (2, -(2.0**-5))],  # d, m, qh[4], qs[16]
    "Q4_K": [(0, 2.0**-14), (2, 2.0**-11)],  # d, dmin, scales[12], qs[128]
    "Q5_K": [(0, 2.0**-14), (2, 2.0**-11)],  # d, dmin, scales[12], qh[32], qs[128]
    "Q6_K": [(208, 2.0**-14)],  # ql[128], qh[64], int8 scales[16], d
    "Q3_K": [(108, 2.0**-14)],  # hmask[32], qs[64], scales[12], d
    "Q2_K": [(80, 2.0**-14), (82, 2.0**-11)],  # scales[16], qs[64], d, dmin
    "IQ4_NL": [(0, 2.0**-14)],  # d, qs[16]: w = d*table[q], |table| <= 127
    "IQ4_XS": [(0, 2.0**-14)],  # d, scales_h, scales_l[4], qs[128]: w = d*(scale-32)*table[q]
}
# Block types whose scale is one E8M0 byte (offset, byte): 2^(byte-127) per block.
_BYTE_SCALES = {"MXFP4": (0, 127 - 10)}  # e, qs[16]: w = 2^(e-127)*fp4[q], |fp4| <= 6 (as halves)
# Float types: (word dtype, bits kept random = sign and mantissa, exponent bits for |w| in [2^-7, 2^-6)).
_FLOAT_BITS = {
    "F32": (np.uint32, 0x807FFFFF, 120 << 23),
    "F16": (np.uint16, 0x83FF, 8 << 10),
    "BF16": (np.uint16, 0x807F, 120 << 7),
}


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    nbytes: int


@dataclasses.dataclass(frozen=True)
class SynthPlan:
    arch: Architecture
    quant: str
    header: bytes
    tensors: tuple[PlannedTensor, ...]

    @property
    def data_offset(self) -> int:
        return _pad(len(self.header))

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return self.data_offset + sum(_pad(t.nbytes) for t in self.tensors)

    def load_memory_bytes(self, n_ctx: int = 512, n_ubatch: int = 512) -> int:
        """Estimate of the RAM llama.cpp needs to load the file without mmap and run a context of n_ctx
        tokens: weights + f16 KV cache + the f32 compute buffer (logits and activations) + a fixed runtime
        overhead. An estimate, not a measurement."""
        arch, n_ubatch = self.arch, min(n_ubatch, n_ctx)
        kv_cache = arch.kv_cache_bytes(n_ctx, n_ubatch)
        activations = arch.compute_buffer_bytes(n_ctx, n_ubatch)
        return self.weight_bytes + kv_cache + activations + RUNTIME_OVERHEAD_BYTES


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _resolve(arch: Architecture | str) -> Architecture:
    return architecture(arch) if isinstance(arch, str) else arch


def plan_file(arch: Architecture | str, quant: str) -> SynthPlan:
    """What write_synthetic will write: the header bytes and each tensor's type and size."""
    arch, quant = _resolve(arch), supported_quant(quant)
    planned = []
    for spec in tensors(arch):
        ggml_type = tensor_type(arch, quant, spec)
        planned.append(PlannedTensor(spec.name, spec.shape, ggml_type, tensor_bytes(spec.shape, ggml_type)))
    return SynthPlan(arch, quant, _header(arch, quant, planned), tuple(planned))


def predict_file_bytes(arch: Architecture | str, quant: str) -> int:
    return plan_file(arch, quant).file_bytes


def _header(arch: Architecture, quant: str, planned: list[PlannedTensor]) -> bytes:
    from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.gguf_writer import WriterState

    writer = GGUFWriter(path=None, arch=arch.family)
    writer.add_name(f"synthetic {arch.name}")
    writer.add_description("random weights written by fleetfit; not a trained model")
    writer.add_file_type(llama_ftype(quant))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_block_count(arch.n_layers)
    writer.add_context_length(arch.context_length)
    writer.add_embedding_length(arch.hidden)
    writer.add_feed_forward_length(arch.ffn)
    writer.add_head_count(arch.n_heads)
    writer.add_head_count_kv(arch.n_kv_heads)
    writer.add_vocab_size(arch.vocab)
    if arch.rope_theta is None:
        writer.add_layer_norm_eps(arch.norm_eps)
    else:
        writer.add_layer_norm_rms_eps(arch.norm_eps)
        writer.add_rope_freq_base(arch.rope_theta)
        writer.add_rope_dimension_count(arch.rotary_dim)
    if arch.head_dim * arch.n_heads != arch.hidden:  # llama.cpp's default head size is hidden / n_heads
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    if arch.is_moe:
        writer.add_expert_count(arch.n_experts)
        writer.add_expert_used_count(arch.n_experts_used)
        writer.add_expert_feed_forward_length(arch.ffn)
    if arch.sliding_window:
        writer.add_sliding_window(arch.sliding_window)

    if arch.vocab < N_SPECIAL_TOKENS:
        raise ModelError(f"{arch.name}: a vocabulary of {arch.vocab} tokens is too small (at least {N_SPECIAL_TOKENS})")
    n_placeholders = arch.vocab - N_SPECIAL_TOKENS
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["<|endoftext|>"]
                          + [f"t{i}" for i in range(n_placeholders)])
    writer.add_token_scores([0.0] * arch.vocab)
    writer.add_token_types([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
                           + [TokenType.CONTROL] + [TokenType.NORMAL] * n_placeholders)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    for t in planned:
        writer.add_tensor_info(t.name, t.shape, np.float32, t.nbytes, raw_dtype=GGMLQuantizationType[t.ggml_type])
    # Write the header into memory: GGUFWriter keeps whole tensors in memory, so the data is streamed by us.
    buffer = io.BytesIO()
    writer.fout, writer.state = [buffer], WriterState.EMPTY
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return buffer.getvalue()


def _random_pool(ggml_type: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """POOL_BYTES of valid random data of this type as uint8, and the size of its unit (block or element)."""
    if ggml_type in _FLOAT_BITS:
        dtype, keep, exponent = _FLOAT_BITS[ggml_type]
        words = rng.integers(0, np.iinfo(dtype).max, size=POOL_BYTES // np.dtype(dtype).itemsize, dtype=dtype,
                             endpoint=True)
        words &= dtype(keep)
        words |= dtype(exponent)
        return words.view(np.uint8), np.dtype(dtype).itemsize
    block_bytes = block_size(ggml_type)[1]
    blocks = rng.integers(0, 255, size=(POOL_BYTES // block_bytes, block_bytes), dtype=np.uint8, endpoint=True)
    for offset, value in _SCALES.get(ggml_type, []):
        blocks[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    if ggml_type in _BYTE_SCALES:
        offset, byte = _BYTE_SCALES[ggml_type]
        blocks[:, offset] = byte
    return blocks.reshape(-1), block_bytes


def _write_tensor(f, tensor: PlannedTensor, pools: dict, rng: np.random.Generator) -> None:
    if len(tensor.shape) == 1:  # small F32 vectors: the 1-D weights are norm scales (1), the rest biases (0)
        fill = 1.0 if tensor.name.endswith(".weight") else 0.0
        f.write(np.full(tensor.shape, fill, dtype=np.float32).tobytes())
        return
    if tensor.ggml_type not in pools:
        pools[tensor.ggml_type] = _random_pool(tensor.ggml_type, rng)
    pool, unit = pools[tensor.ggml_type]
    remaining = tensor.nbytes
    while remaining:
        start = int(rng.integers(0, len(pool) // unit)) * unit
        chunk = pool[start:start + remaining]
        f.write(chunk)
        remaining -= len(chunk)


def _write(plan: SynthPlan, target: pathlib.Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pools: dict = {}
    with target.open("wb") as f:
        f.write(plan.header)
        for tensor in plan.tensors:
            f.write(b"\0" * (_pad(f.tell()) - f.tell()))
            _write_tensor(f, tensor, pools, rng)
        f.write(b"\0" * (_pad(f.tell()) - f.tell()))


def check_room(plan: SynthPlan, free_disk_bytes: int, available_ram_bytes: int, n_ctx: int = 512) -> None:
    """Refuse (ModelError) a file that does not fit on the disk or whose loading would not fit in RAM."""
    name = f"{plan.arch.name} {plan.quant}"
    if plan.file_bytes > free_disk_bytes:
        raise ModelError(f"{name} needs {_gb(plan.file_bytes)} of disk, only {_gb(free_disk_bytes)} is free "
                         f"(use --force to write it anyway)")
    needed = plan.load_memory_bytes(n_ctx)
    if needed > available_ram_bytes:
        raise NoRoomError(f"{name} needs about {_gb(needed)} of RAM to load, only {_gb(available_ram_bytes)} is "
                         f"available (use --force to write it anyway)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def write_synthetic(arch: Architecture | str, quant: str, path: pathlib.Path | str, *, seed: int = 0,
                    force: bool = False, free_disk_bytes: int | None = None,
                    available_ram_bytes: int | None = None) -> pathlib.Path:
    """Write a synthetic GGUF at `path` and return it. Refuses (ModelError) when the disk or RAM is short unless
    `force`; free_disk_bytes / available_ram_bytes default to what the machine reports. Writes under a temporary
    name unique to this call and renames at the end, so a failed or interrupted write leaves nothing under either
    name and concurrent writers never meet (the agent also locks: agent/model_cache.py)."""
    plan = plan_file(arch, quant)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        if free_disk_bytes is None:
            free_disk_bytes = shutil.disk_usage(path.parent).free
        if available_ram_bytes is None:  # the agent passes its own figure (agent/resources.py: cgroup limits too)
            available_ram_bytes = psutil.virtual_memory().available
        check_room(plan, free_disk_bytes, available_ram_bytes)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        _write(plan, partial, seed)
        os.replace(partial, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave a partial file behind
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ModelError(f"could not write {path}: {exc.strerror or exc}") from None
        raise
    return path
