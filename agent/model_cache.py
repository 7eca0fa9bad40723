"""The agent's model cache: real models fetched from the registry and the precision ladder derived from them."""

import dataclasses
import os
import pathlib

from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.models import real_models
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf
from fleetfit.models.quants import llama_ftype, parse_quant

QUANTIZE_TIMEOUT_S = 1800.0


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
    """A model reference that names a file rather than a real model."""
    return os.sep in ref or ref.endswith(".gguf") or os.path.exists(ref)


def derive(src: pathlib.Path, quant: str, dst: pathlib.Path, threads: int) -> pathlib.Path:
    """Write `src` requantized to `quant` at `dst` with llama.cpp's own quantizer; atomic on success."""
    inspect_gguf(src)  # refuse a missing or damaged source with a clear message
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".part")
    try:
        run_worker({"op": "quantize", "src": str(src), "dst": str(partial), "ftype": llama_ftype(quant),
                    "threads": threads}, QUANTIZE_TIMEOUT_S)
        os.replace(partial, dst)
    except WorkerFailure as exc:
        raise ModelError(f"could not derive {quant} from {src.name}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return dst


def resolve(ref: str, quant: str | None, cache_dir: pathlib.Path, threads: int) -> ResolvedModel:
    """A model file for `ref` (a path, or a real model's name) at `quant`, fetching or deriving it if needed."""
    if is_path(ref):
        path = pathlib.Path(ref)
        info = inspect_gguf(path)
        if quant is not None and parse_quant(quant) != info.quant:
            raise ModelError(f"{path.name} is {info.quant}, not {parse_quant(quant)}; "
                             f"derive it first with `fleetfit-agent models quantize {path} --to {parse_quant(quant)}`")
        return ResolvedModel(name=path.stem, path=path, origin="file")
    model = real_models.real_model(ref)
    quant = parse_quant(quant) if quant else model.quant
    target = real_models.model_file(cache_dir, model.name, quant)
    if not target.is_file():
        base = real_models.pull(model.name, cache_dir)
        if quant != model.quant:
            derive(base, quant, target, threads)
    return ResolvedModel(name=model.name, path=target, origin="real" if quant == model.quant else "derived")


def cached_models(cache_dir: pathlib.Path) -> list[tuple[str, str, pathlib.Path, int]]:
    """(name, quant, path, bytes) for every finished model file in the cache."""
    rows = []
    for path in sorted((cache_dir / "models").glob("*/*.gguf")):
        name = path.parent.name
        quant = path.stem.removeprefix(f"{name}-")
        rows.append((name, quant, path, path.stat().st_size))
    return rows
