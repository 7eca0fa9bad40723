"""The backends both sides know, in one vocabulary: names, precisions in their canonical spelling, the compute
devices each can use, which models each can obtain, and bytes per weight for the scaling model.

No heavy import: the coordinator checks campaigns and fit questions against this table, and the agent registers
one module per backend (agent/backends/registry.py) against the same names. Adding a backend (MLX, vLLM, ...)
is one entry here plus one module there; job bounds, help texts and the scaling model's byte sizes read the entry.

Precisions: llama.cpp takes GGUF file types (F16, Q8_0, Q4_0, Q4_K_M, ...; models/quants.py); torch and
onnxruntime take fp32/bf16/fp16/int8/int4 (weight-only int8/int4).
"""

import dataclasses
import difflib
import math
import re

from fleetfit.models.errors import ModelError

DEFAULT_BACKEND = "llama.cpp"


def llama_cpp_python_pin() -> str:
    """The llama-cpp-python release fleetfit installs: the pin of pyproject's `llama` extra (scripts/install.sh's
    llama-cpp-build.env names the same, held equal by tests/agent/test_llama_build.py)."""
    import importlib.metadata

    for requirement in importlib.metadata.requires("fleetfit") or []:
        if found := re.match(r"llama[-_]cpp[-_]python\s*==\s*([\w.]+)", requirement):
            return found.group(1)
    raise ModelError("fleetfit's metadata pins no llama-cpp-python release (its `llama` extra)")
EXPERTS = " experts"  # the suffix of an expert tensor's storage type in bytes_by_type(experts_apart=True)
# A framework precision's sizes: (bytes per weight of a matrix in a matrix product, bytes per element of the other
# tensors and the activations). int8: one byte plus a 2-byte scale per output row (negligible); int4: half a byte
# plus a 2-byte scale and zero per group of 32..128 (the smallest group, the upper bound, is assumed). Norms and
# biases stay at the activation dtype; int8/int4 weights meet bf16 activations.
FRAMEWORK_SIZES = (("fp32", 4.0, 4), ("bf16", 2.0, 2), ("fp16", 2.0, 2), ("int8", 1.0, 2), ("int4", 0.5 + 4 / 32, 2))
FRAMEWORK_PRECISIONS = tuple(name for name, _, _ in FRAMEWORK_SIZES)


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    name: str
    precisions: tuple[str, ...] | None  # canonical spellings; None: every GGUF file type
    compute_devices: tuple[str, ...]  # kinds of compute device: "cpu", "cuda", "metal"
    shape_families: tuple[str, ...]  # catalogue families it runs from a shape alone (synthetic/random weights)
    runs_real_models: bool  # real weights (a shipped model, or a GGUF file)
    summary: str
    # (precision, matrix bytes per weight, other bytes per element) for each precision; empty: FRAMEWORK_SIZES'
    # rows of its precisions (a GGUF type's sizes come from models/quant_sizes.py)
    sizes: tuple[tuple[str, float, int], ...] = ()

    def _sizes(self, precision: str) -> tuple[float, int]:
        row = next((r for r in self.sizes or FRAMEWORK_SIZES if r[0] == precision), None)
        if row is None:
            raise ModelError(f"no size formula for {self.name} {precision}")
        return row[1], row[2]

    def canonical(self, precision: str) -> str:
        """The canonical spelling of a precision for this backend, or a ModelError naming what it accepts."""
        if self.precisions is None:
            from fleetfit.models.quants import parse_quant

            return parse_quant(precision)
        low = precision.strip().lower()
        if low in self.precisions:
            return low
        near = difflib.get_close_matches(low, self.precisions, n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ModelError(f"{self.name} does not take precision {precision!r} (it takes {self.precision_text()}){hint}")

    def precision_text(self) -> str:
        return "GGUF types such as F16, Q8_0, Q4_0, Q4_K_M" if self.precisions is None else ", ".join(self.precisions)

    def takes_gguf_types(self) -> bool:
        return self.precisions is None

    def matrix_bytes_per_weight(self, precision: str) -> float:
        """Average bytes per weight of the matrices (framework precisions; GGUF types: llama.cpp's mix)."""
        precision = self.canonical(precision)
        if self.takes_gguf_types():
            from fleetfit.models.quant_sizes import FILE_TYPES, bytes_per_weight

            if precision not in FILE_TYPES:
                raise ModelError(f"no size formula for {precision} (known: {', '.join(FILE_TYPES)})")
            return bytes_per_weight(FILE_TYPES[precision])
        return self._sizes(precision)[0]

    def can_size(self, precision: str) -> bool:
        """Whether weight_bytes has a formula for this precision."""
        try:
            self.matrix_bytes_per_weight(precision)
        except ModelError:
            return False
        return True

    def weight_bytes(self, arch, precision: str, per_token: bool = False) -> int:
        """Bytes of the weights of `arch` held at `precision`; per_token: those one decoded token reads (a lookup
        in a token-embedding table reads one row, unless the table is also the output projection; of a mixture
        of experts, the n_experts_used experts a token is routed to)."""
        return int(sum(self.bytes_by_type(arch, precision, per_token).values()))

    def bytes_by_type(self, arch, precision: str, per_token: bool = False,
                      without_output: bool = False, experts_apart: bool = False) -> dict[str, float]:
        """weight_bytes split by storage type: {GGML type: bytes} for GGUF (a Q4_0 file also holds Q6_K and F32
        tensors), {precision or "<precision>-other": bytes} for a framework's matrices and its other tensors.
        `without_output`: leave out the output projection (a tied embedding table then counts as a lookup).
        `experts_apart`: a mixture's expert tensors under their own key, "<type> experts" (another kernel)."""
        from fleetfit.models.catalogue import active_fraction

        precision = self.canonical(precision)
        self.matrix_bytes_per_weight(precision)  # refuses a type without a size formula
        if self.takes_gguf_types():
            from fleetfit.models.quant_sizes import tensor_bytes, tensor_type

            sizes = {}
            for s in _tensors(arch):
                t = tensor_type(arch, precision, s)
                sizes[s.name] = (s, tensor_bytes(s.shape, t), t)
            lookup_only = not arch.tied_embeddings
        else:
            matrix, other = self._sizes(precision)
            sizes = {}
            for s in _tensors(arch):
                is_matrix = len(s.shape) == 2 and not s.name.endswith("_embd.weight")
                sizes[s.name] = (s, math.prod(s.shape) * (matrix if is_matrix else other),
                                 precision if is_matrix else f"{precision}-other")
            if arch.tied_embeddings and matrix != other:  # quantizing makes the tied output projection a copy
                sizes["output.weight"] = (None, arch.vocab * arch.hidden * matrix, precision)
            lookup_only = not arch.tied_embeddings or matrix != other  # a shared table is also the projection
        if without_output:
            sizes.pop("output.weight", None)
            lookup_only = True
        from fleetfit.models.roofline import token_reads

        out: dict[str, float] = {}
        for name, (spec, nbytes, kind) in sizes.items():
            if per_token and spec is not None:
                nbytes = token_reads(nbytes, spec.shape[0], lookup=name == "token_embd.weight" and lookup_only,
                                     routed=active_fraction(arch, spec))
            if experts_apart and spec is not None and spec.is_expert:
                kind += EXPERTS
            out[kind] = out.get(kind, 0.0) + nbytes
        return out


def _tensors(arch):
    from fleetfit.models.catalogue import tensors

    return tensors(arch)


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("llama.cpp", None, ("cpu", "cuda", "metal"),
                ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "gpt2", "gpt-oss"), True,
                "llama.cpp through llama-cpp-python; GGUF files, catalogue shapes as synthetic GGUFs"),
    BackendSpec("torch", FRAMEWORK_PRECISIONS, ("cpu", "cuda"), ("llama", "qwen2"), True,
                "PyTorch eager; real GGUF weights dequantized, or a catalogue shape with random weights"),
    BackendSpec("onnxruntime", ("fp32", "int8", "int4"), ("cpu", "cuda"), (), True,
                "ONNX Runtime on a model exported from real GGUF weights"),
)}


def backend(name: str) -> BackendSpec:
    """The backend called `name` (exact spelling, case-insensitive), or a ModelError listing the known ones."""
    key = name.strip()
    for spec in BACKENDS.values():
        if spec.name.lower() == key.lower():
            return spec
    near = difflib.get_close_matches(key, list(BACKENDS), n=2, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise ModelError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)}){hint}")


def all_compute_devices() -> tuple[str, ...]:
    """Every kind of compute device some backend uses, in the order the backends list them."""
    return tuple(dict.fromkeys(kind for spec in BACKENDS.values() for kind in spec.compute_devices))


def precisions_help() -> str:
    """Each backend's precisions, for the help of a --quant option."""
    return "; ".join(f"{spec.name}: {spec.precision_text()}" for spec in BACKENDS.values())


def canonical(backend_name: str, precision: str) -> tuple[str, str]:
    """(backend name, precision) both spelled canonically, or a ModelError."""
    spec = backend(backend_name or DEFAULT_BACKEND)
    return spec.name, spec.canonical(precision)


def obtainable(spec: BackendSpec, model_name: str, real_models: set[str], catalogue: dict) -> str | None:
    """Why `spec` cannot obtain `model_name` on any device (None when it can): a real model it can fetch, or a
    catalogued shape of a family it runs with random weights."""
    if model_name in real_models:
        return None if spec.runs_real_models else f"{spec.name} runs catalogue shapes only, not real models"
    arch = catalogue.get(model_name)
    if arch is None:
        return f"unknown model {model_name!r}"
    if arch.family not in spec.shape_families:
        if not spec.shape_families:
            return f"{spec.name} runs real models only, not catalogue shapes like {model_name}"
        return f"{spec.name} runs {'/'.join(spec.shape_families)} shapes; {model_name} is {arch.family}"
    return None
