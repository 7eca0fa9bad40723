"""An architecture from what a user has: a catalogue name, a GGUF file (its header only) or a Hugging Face
config.json, and the same shape on the wire (fleetfit.v1.Architecture).

Both files are untrusted: a GGUF is read through models/gguf_file.py's bounded header walker (the tensor data
is never touched), a config.json must be a regular file under MAX_CONFIG_BYTES holding one JSON object, and
every number ends in Architecture's own checks (positive, bounded). A shape the reader does not understand is
a one-line ModelError naming the field it lacks. A shape equal to a catalogued one is that catalogue entry (so
the fleet's measurements of it apply); otherwise it is named after the file, never after a catalogue entry.
The operator's CLI reads the file and sends the shape (`to_proto`); the coordinator never reads a path.
"""

import dataclasses
import json
import pathlib

from fleetfit.models.catalogue import CATALOGUE, MOE_FAMILIES, Architecture, architecture, tensors
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import GGUF_MAGIC, open_gguf, open_regular

MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few kB
# Hugging Face model_type -> llama.cpp family
HF_FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3moe",
               "gemma3_text": "gemma3", "gemma3": "gemma3", "phi3": "phi3", "gpt2": "gpt2", "gpt_oss": "gpt-oss"}
_OPTIONAL_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def is_file_ref(ref: str) -> bool:
    """Whether a model reference names a file (a path, or a name ending in .gguf / .json) rather than a catalogue entry."""
    return "/" in ref or ref.endswith((".gguf", ".json")) or pathlib.Path(ref).is_file()


def architecture_of(ref: str) -> Architecture:
    """The shape `ref` names: a catalogue entry, or a GGUF / config.json file read here; ModelError otherwise."""
    ref = ref.strip()
    if not is_file_ref(ref):
        return architecture(ref)
    path = pathlib.Path(ref).expanduser()
    f, _ = open_regular(path)  # a missing, special or empty file is refused here, with why
    with f:
        head = f.read(4)
    try:
        return from_gguf(path) if head == GGUF_MAGIC else from_hf_config(path)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. {"hidden_size": {}}: a number of the wrong type
        raise ModelError(f"{path}: a shape field has a value of the wrong type ({' '.join(str(exc).split())[:120]})") from None


def file_quant(ref: str) -> str | None:
    """The file type of a GGUF file (what `fit FILE` asks about by default); None for a config.json."""
    from fleetfit.models.gguf_file import inspect_gguf

    path = pathlib.Path(ref).expanduser()
    f, _ = open_regular(path)
    with f:
        if f.read(4) != GGUF_MAGIC:
            return None
    quant = inspect_gguf(path).quant
    return None if quant == "unknown" or quant.startswith("ftype-") else quant


def _structure(arch: Architecture) -> dict:
    """What sets memory and speed: every field but the name, the source and the numerics (rope base, epsilon)."""
    skip = ("name", "source", "rope_theta", "norm_eps", "explicit_head_dim")
    return {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch) if f.name not in skip} | \
        {"head_dim": arch.head_dim}


def _named(arch: Architecture, stem: str) -> Architecture:
    """The catalogue entry of the same shape, or the shape named after its file (never a catalogue name)."""
    structure = _structure(arch)
    for known in CATALOGUE.values():
        if _structure(known) == structure:
            return known
    name = stem.strip()[:80] or "model"
    if name.lower() in CATALOGUE:
        name += "-custom"
    return dataclasses.replace(arch, name=name)


# -- Hugging Face config.json --------------------------------------------------------------------------------

def from_hf_config(path: pathlib.Path) -> Architecture:
    path = pathlib.Path(path)
    f, size = open_regular(path)
    with f:
        if size > MAX_CONFIG_BYTES:
            raise ModelError(f"{path}: {size:,} bytes is too large for a config.json (at most {MAX_CONFIG_BYTES:,})")
        raw = f.read(MAX_CONFIG_BYTES + 1)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelError(f"{path}: neither a GGUF file nor a JSON config.json") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a config.json holds one JSON object")
    model_type = config.get("model_type")
    if model_type == "gemma3" and isinstance(config.get("text_config"), dict):  # the multimodal wrapper
        config = {"model_type": "gemma3_text", **config["text_config"]}
    family = HF_FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        shown = repr(model_type) if model_type is not None else "no model_type"
        raise ModelError(f"{path}: unsupported architecture ({shown}; fleetfit reads {', '.join(sorted(HF_FAMILIES))})")

    def need(*keys):
        for key in keys:
            if key in config and config[key] is not None:
                return config[key]
        raise ModelError(f"{path}: config.json lacks {keys[0]} (needed for a {model_type} shape)")

    def get(key, default):
        value = config.get(key)
        return default if value is None else value

    stem = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    if family == "gpt2":
        hidden = need("n_embd", "hidden_size")
        arch = Architecture(name=stem or "model", family=family, n_layers=need("n_layer", "num_hidden_layers"),
                            hidden=hidden, n_heads=need("n_head", "num_attention_heads"),
                            n_kv_heads=need("n_head", "num_attention_heads"), ffn=get("n_inner", None) or 4 * hidden,
                            vocab=need("vocab_size"), context_length=need("n_positions", "max_position_embeddings"),
                            tied_embeddings=True, rope_theta=None, norm_eps=get("layer_norm_epsilon", 1e-5),
                            source=str(path))
        return _named(arch, arch.name)
    n_heads, hidden = need("num_attention_heads"), need("hidden_size")
    extra = {}
    # these families give head_dim explicitly; a config without it is not one we understand
    head_dim = need("head_dim") if family in ("qwen3", "qwen3moe", "gemma3", "gpt-oss") else config.get("head_dim")
    if head_dim is not None:
        extra["explicit_head_dim"] = head_dim
    if family in MOE_FAMILIES:
        extra["n_experts"] = need("num_experts", "num_local_experts")
        extra["n_experts_used"] = need("num_experts_per_tok")
        if family == "qwen3moe" and (get("mlp_only_layers", []) or get("decoder_sparse_step", 1) != 1):
            raise ModelError(f"{path}: dense layers between the expert layers (mlp_only_layers, decoder_sparse_step) "
                             f"are not supported")
    if family == "phi3":
        extra["rotary_fraction"] = get("partial_rotary_factor", 1.0)
    if family in ("gemma3", "gpt-oss") and get("sliding_window", None):
        extra["sliding_window"] = config["sliding_window"]
        extra["sliding_pattern"] = _sliding_pattern(path, config, 6 if family == "gemma3" else 2)
    ffn = need("moe_intermediate_size") if family == "qwen3moe" else need("intermediate_size")
    tied_default = family == "gemma3"  # Gemma ties always; the others' configs say so when they do
    arch = Architecture(name=stem or "model", family=family, n_layers=need("num_hidden_layers"),
                        hidden=hidden, n_heads=n_heads,
                        n_kv_heads=get("num_key_value_heads", n_heads), ffn=ffn, vocab=need("vocab_size"),
                        context_length=need("max_position_embeddings"),
                        tied_embeddings=bool(get("tie_word_embeddings", tied_default)),
                        rope_theta=float(get("rope_theta", 10000.0)), norm_eps=float(get("rms_norm_eps", 1e-6)),
                        source=str(path), **extra)
    return _named(arch, arch.name)


def _sliding_pattern(path: pathlib.Path, config: dict, default: int) -> int:
    """Every n-th layer global, the rest sliding: from layer_types when the config lists them."""
    layer_types = config.get("layer_types")
    if not isinstance(layer_types, list) or not layer_types:
        pattern = config.get("sliding_window_pattern", default)
        return default if pattern is None else pattern
    if "sliding_attention" not in layer_types:
        return 0
    if "full_attention" not in layer_types:
        raise ModelError(f"{path}: layer_types has no global (full_attention) layer, which fleetfit does not model")
    pattern = layer_types.index("full_attention") + 1
    if layer_types != [("full_attention" if (i + 1) % pattern == 0 else "sliding_attention")
                       for i in range(len(layer_types))]:
        raise ModelError(f"{path}: layer_types is not every {pattern}th layer global, the rest sliding")
    return pattern


# -- GGUF header ---------------------------------------------------------------------------------------------

def from_gguf(path: pathlib.Path) -> Architecture:
    """The shape in a GGUF file's metadata, checked against its tensor table (header only, bounded)."""
    path = pathlib.Path(path)
    gguf = open_gguf(path, views=False)  # the tensor table's dims are all it reads of the tensors
    family = gguf.fields.get("general.architecture")
    family = family.value if family is not None else None
    if family not in {*HF_FAMILIES.values()}:
        raise ModelError(f"{path}: unsupported GGUF architecture {family!r} "
                         f"(fleetfit reads {', '.join(sorted(set(HF_FAMILIES.values())))})")
    dims = {name: [int(d) for d in shape] for name, _, shape, _ in gguf.infos}

    def key(name, default=...):
        field = gguf.fields.get(f"{family}.{name}")
        if field is None or field.value is None:
            if default is ...:
                what = "an array" if field is not None else "missing"
                raise ModelError(f"{path}: GGUF metadata {family}.{name} is {what} (needed for a {family} shape)")
            return default
        return field.value

    if "token_embd.weight" not in dims:
        raise ModelError(f"{path}: the GGUF has no token_embd.weight tensor (needed for the vocabulary size)")
    hidden, n_heads = key("embedding_length"), key("attention.head_count")
    extra = {}
    head_dim = key("attention.key_length", None)
    if head_dim is not None:
        extra["explicit_head_dim"] = head_dim
    if family in MOE_FAMILIES:
        extra.update(n_experts=key("expert_count"), n_experts_used=key("expert_used_count"))
    rope_dims = key("rope.dimension_count", None)
    if family == "phi3" and isinstance(rope_dims, int) and isinstance(hidden, int) and isinstance(n_heads, int) \
            and n_heads > 0:
        extra["rotary_fraction"] = rope_dims / (head_dim or hidden // n_heads)
    if family in ("gemma3", "gpt-oss") and key("attention.sliding_window", None):
        extra["sliding_window"] = key("attention.sliding_window")
        # llama.cpp's default patterns for them, unless the file says
        extra["sliding_pattern"] = key("attention.sliding_window_pattern", 6 if family == "gemma3" else 2)
    eps = key("attention.layer_norm_epsilon", None) if family == "gpt2" else key("attention.layer_norm_rms_epsilon", 1e-6)
    arch = Architecture(
        name=str(path.stem), family=family, n_layers=key("block_count"), hidden=hidden, n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads),
        ffn=key("expert_feed_forward_length") if family in MOE_FAMILIES else key("feed_forward_length"),
        vocab=dims["token_embd.weight"][1], context_length=key("context_length"),
        tied_embeddings="output.weight" not in dims, rope_theta=None if family == "gpt2" else float(key("rope.freq_base", 10000.0)),
        norm_eps=float(eps or 1e-5), source=str(path), **extra)
    expected = {s.name: list(reversed(s.shape)) for s in tensors(arch)}
    found = {n: d for n, d in dims.items() if n not in _OPTIONAL_TENSORS}
    for name in sorted(set(expected) | set(found)):
        if expected.get(name) != found.get(name):
            what = "lacks" if name not in found else "has an unexpected" if name not in expected else "has another shape of"
            raise ModelError(f"{path}: the file {what} tensor {name} for a {family} shape "
                             f"(fleetfit models {family} as llama.cpp's loader does)")
    return _named(arch, arch.name)


# -- the wire ------------------------------------------------------------------------------------------------

_WIRE_INTS = ("n_layers", "hidden", "n_heads", "n_kv_heads", "ffn", "vocab", "context_length", "n_experts",
              "n_experts_used", "sliding_pattern")


def to_proto(arch: Architecture):
    from fleetfit.v1 import fleetfit_pb2 as pb

    out = pb.Architecture(name=arch.name, family=arch.family, tied_embeddings=arch.tied_embeddings,
                          norm_eps=arch.norm_eps, source=arch.source[:500], rotary_fraction=arch.rotary_fraction,
                          **{k: getattr(arch, k) for k in _WIRE_INTS})
    for field, value in (("rope_theta", arch.rope_theta), ("head_dim", arch.explicit_head_dim),
                         ("sliding_window", arch.sliding_window)):
        if value is not None:
            setattr(out, field, value)
    return out


def from_proto(message) -> Architecture:
    """The Architecture a wire message describes; ModelError (one line) for anything Architecture refuses."""
    return Architecture(
        name=message.name, family=message.family, tied_embeddings=message.tied_embeddings, norm_eps=message.norm_eps,
        source=message.source or "sent by the operator", rotary_fraction=message.rotary_fraction or 1.0,
        rope_theta=message.rope_theta if message.HasField("rope_theta") else None,
        explicit_head_dim=message.head_dim if message.HasField("head_dim") else None,
        sliding_window=message.sliding_window if message.HasField("sliding_window") else None,
        **{k: getattr(message, k) for k in _WIRE_INTS})


def checked(message, name: str) -> Architecture:
    """The shape a request carries for the model `name` (fleetfit.v1.Architecture), checked as any catalogue entry
    is (bounded numbers, a family llama.cpp has), or ValueError (one line). A shape equal to a catalogued one is
    that entry; another shape may not take a catalogued name."""
    try:
        shape = from_proto(message)
    except ModelError as exc:
        raise ValueError(f"shape {message.name[:40]!r}: {exc}") from None
    if shape.name != name:
        raise ValueError(f"the shape is named {shape.name[:40]!r}, the model {name[:40]!r}")
    if shape.name in CATALOGUE and shape != CATALOGUE[shape.name]:
        raise ValueError(f"the shape named {shape.name!r} differs from the catalogued one; give it another name")
    return shape
