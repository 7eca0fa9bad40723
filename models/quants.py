"""GGUF quantization types, named as llama.cpp names them (F16, Q8_0, Q4_0, Q4_K_M, ...).

The list and the numeric file types come from the `gguf` package (llama.cpp's own), not a hand-kept table.
"""

import difflib
import functools

from fleetfit.models.errors import ModelError


@functools.cache  # parse_quant is called per figure by answers: build the table once
def _file_types() -> dict[str, int]:
    from gguf import LlamaFileType

    names = {}
    for member in LlamaFileType:
        if member.name == "GUESSED":
            continue
        names[member.name.removeprefix("MOSTLY_").removeprefix("ALL_")] = int(member.value)
    return names


def quant_names() -> list[str]:
    return sorted(_file_types())


def parse_quant(name: str) -> str:
    """The canonical spelling of a quant name, or a ModelError that suggests the nearest ones."""
    canonical = name.strip().upper()
    if canonical in _file_types():
        return canonical
    near = difflib.get_close_matches(canonical, quant_names(), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else f" (known: {', '.join(quant_names())})"
    raise ModelError(f"unknown quant type {name!r}{hint}")


def llama_ftype(name: str) -> int:
    """llama.cpp's `llama_ftype` value for a quant name (what llama_model_quantize takes)."""
    return _file_types()[parse_quant(name)]


def quant_of_ftype(ftype: int) -> str:
    for name, value in _file_types().items():
        if value == ftype:
            return name
    return f"ftype-{ftype}"
