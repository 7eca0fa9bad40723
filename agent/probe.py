"""`fleetfit-agent limits probe`: walk a ladder of model sizes for each precision on this device.

The default ladder is chosen for what the scaling model must learn, not for size alone: architectures that differ
on the axes users' models differ on (vocabulary 32k..128k, tied and untied embeddings, GQA ratio 1 to 8, deep and
narrow vs shallow and wide), so that a model the device never ran is predicted from neighbours on every axis, and
one run at depth (a KV cache of 2048 tokens: llama-bench's -d) so that decode at long contexts is measured, not
assumed. A rung is a name, or name@depth.

Each size is a synthetic GGUF of a catalogued architecture (real shapes, random weights: speed and
memory of dense inference do not depend on the weights' values), profiled in an isolated worker under
an address-space cap below the RAM available, then deleted. A size whose predicted load memory is above
the cap is recorded as not fitting without being attempted, and so is every larger size of that
precision. A size that loads but whose decode rate collapses against the smaller sizes' trend (memory
thrash) counts as not fitting, with its figures.
"""

import dataclasses
import pathlib
import shutil
import time
import uuid

from fleetfit.agent import profiling, resources
from fleetfit.models import job_bounds, synth
from fleetfit.models.job_bounds import NOISE_CV, spread_of
from fleetfit.models.catalogue import architecture, n_params
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant
from fleetfit.v1 import fleetfit_pb2 as pb

# smollm2-135m: vocab 49k, tied, GQA 3, 30 narrow layers; distilgpt2: vocab 50k, tied, no GQA, 6 layers (what a layer
# costs against what a token costs); llama-3.2-1b: vocab 128k, tied, GQA 4, 16 wide layers; tinyllama-1.1b: vocab
# 32k, untied, GQA 8; llama-2-7b: vocab 32k, untied, no GQA, 4096 wide. The two runs at depth have GQA 3 and 1, which
# tells the KV cache's bytes from attention's FLOPs (coordinator/predict/speed_model.py). Larger sizes (llama-2-13b) find
# the size limit: add them with --sizes.
DEFAULT_SIZES = ("smollm2-135m", "smollm2-135m@2048", "distilgpt2", "distilgpt2@768", "llama-3.2-1b", "tinyllama-1.1b",
                 "llama-2-7b")
MAX_DEPTH = 131072
RAM_MARGIN_BYTES = 1 << 30  # left to the OS and the agent itself
# Under a cgroup limit the OS lives outside it and the agent's own use is already counted: a margin for what the
# worker maps besides the model (thread stacks, the interpreter).
CGROUP_MARGIN_BYTES = 128 << 20
# Decode is memory-bound: tokens/s × weight bytes stays roughly constant across sizes. A size below this
# fraction of that product from the previous size is thrashing, not computing.
COLLAPSE_FRACTION = 0.2
GB = 1e9
MAX_PASSES = 10
REMEASURE = 2


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    n_prompt: int = job_bounds.CALIBRATION_RUN[0]
    n_gen: int = job_bounds.CALIBRATION_RUN[1]
    repetitions: int = job_bounds.CALIBRATION_RUN[2]
    threads: int = 0
    timeout_s: float = 1800.0
    memory_cap_bytes: int | None = None  # None: the RAM available at each step, less a margin
    collapse_fraction: float = COLLAPSE_FRACTION
    passes: int = 1  # the ladder walked this many times; the coordinator calibrates on the median of every pass
    remeasure: int = REMEASURE  # a rung whose repetitions spread over NOISE_CV is measured again up to this often


def parse_rung(text: str):
    """A ladder rung, "name" or "name@depth": (Architecture, depth), or a one-line ModelError."""
    name, _, depth = text.strip().partition("@")
    if depth and not (depth.isdigit() and 0 <= int(depth) <= MAX_DEPTH):
        raise ModelError(f"a rung's depth must be 0..{MAX_DEPTH} tokens (name@depth), got {text.strip()[:40]!r}")
    return architecture(name), int(depth or 0)


def memory_cap_bytes() -> int:
    """The memory available to this agent less a margin: the host's less RAM_MARGIN_BYTES, and under a cgroup
    limit, the room it leaves less CGROUP_MARGIN_BYTES, whichever is smaller."""
    memory = resources.memory()
    caps = [memory.host_available_bytes - RAM_MARGIN_BYTES]
    if memory.cgroup_available_bytes is not None:
        caps.append(memory.cgroup_available_bytes - CGROUP_MARGIN_BYTES)
    return max(min(caps), 0)


def _unmeasured(arch, quant: str, request: pb.ProfileRequest, device_id: str, failure: int, reason: str,
                method: str) -> pb.ProfileResult:
    """A result for a size that was not measured, saying why."""
    return pb.ProfileResult(
        result_id=str(uuid.uuid4()), device_id=device_id, request=request, model_name=arch.name, quant=quant,
        n_depth=request.decode_depth,
        model_n_params=n_params(arch), model_origin="synthetic", failure=failure, error=reason,
        provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_ESTIMATED, method=method, scope="device"), started_unix_s=time.time())


def _decode_collapsed(result: pb.ProfileResult, previous: pb.ProfileResult | None,
                      fraction: float = COLLAPSE_FRACTION) -> str | None:
    if previous is None or result.failure:
        return None
    expected = previous.decode_tokens_per_s.mean * previous.model_file_bytes / result.model_file_bytes
    measured = result.decode_tokens_per_s.mean
    if measured < fraction * expected:
        return (f"decode collapsed to {measured:.2f} tok/s, {measured / expected:.0%} of the "
                f"{expected:.2f} tok/s that {previous.model_name}'s rate predicts (memory thrash)")
    return None


def _noisy(result: pb.ProfileResult) -> bool:
    """Whether a run's repetitions spread over NOISE_CV in decode or prefill (the coordinator's test of a point)."""
    return not result.failure and any((cv := spread_of([s])) is not None and cv > NOISE_CV
                                      for s in (result.decode_tokens_per_s, result.prefill_tokens_per_s))


def _profile_synthetic(arch, quant: str, request: pb.ProfileRequest, device_id: str, cache_dir: pathlib.Path,
                       cap: int, previous: pb.ProfileResult | None, fraction: float,
                       remeasure: int = 0) -> list[pb.ProfileResult]:
    """Write, profile and delete one size. A collapsed decode is measured once more before it counts: a
    noisy neighbour can slow one run, thrash slows every run. A run whose repetitions spread over NOISE_CV is
    measured again, up to `remeasure` times while it stays noisy: each run is a result of its own (the coordinator
    pools the repetitions of like runs, and down-weights what stays noisy)."""
    # A directory of this probe's own, so that the cache's synthetic/<arch>-<quant>.gguf (a file `models synth` or a
    # job made, which `models list` shows) is never overwritten or deleted here.
    own = cache_dir / "synthetic" / f".limits-probe-{uuid.uuid4().hex[:12]}"
    own.mkdir(parents=True)
    path = own / f"{arch.name}-{quant}.gguf"
    try:
        synth.write_synthetic(arch, quant, path, force=True)  # RAM and disk were checked by the caller
    except ModelError as exc:  # e.g. the disk filled up mid-write; the partial file is gone
        shutil.rmtree(own, ignore_errors=True)
        return [_unmeasured(arch, quant, request, device_id, pb.FAILURE_KIND_ERROR, str(exc), "synthetic write failed")]
    run = pb.ProfileRequest()
    run.CopyFrom(request)
    run.model.CopyFrom(pb.ModelRef(path=str(path)))  # the file just written (written with force, deleted after)
    try:
        result = profiling.profile(run, device_id, cache_dir, memory_limit_bytes=cap)
        if _decode_collapsed(result, previous, fraction):
            again = profiling.profile(run, device_id, cache_dir, memory_limit_bytes=cap)
            if again.decode_tokens_per_s.mean > result.decode_tokens_per_s.mean:
                result = again
        runs = [result]
        while _noisy(runs[-1]) and len(runs) <= remeasure:
            runs.append(profiling.profile(run, device_id, cache_dir, memory_limit_bytes=cap))
    finally:  # the probe's own directory: its file and the lock files the cache keeps beside it (model_cache.in_use)
        shutil.rmtree(own, ignore_errors=True)
    for r in runs:
        r.model_name, r.model_origin = arch.name, "synthetic"
    collapse = _decode_collapsed(result, previous, fraction)
    if collapse:
        result.failure, result.error = pb.FAILURE_KIND_OOM, collapse
        return [result]
    return runs


def probe(sizes: list[str], quants: list[str], device_id: str, cache_dir: pathlib.Path, settings: ProbeSettings,
          on_result=lambda result: None) -> list[pb.ProfileResult]:
    rungs = sorted(dict.fromkeys(parse_rung(text) for text in sizes), key=lambda r: (n_params(r[0]), r[1]))
    quants = [parse_quant(q) for q in quants]
    results = []
    (cache_dir / "synthetic").mkdir(parents=True, exist_ok=True)
    for quant in [q for _ in range(settings.passes) for q in quants]:  # every pass walks the whole ladder
        previous, refused = None, None
        for arch, depth in rungs:
            request = pb.ProfileRequest(model=pb.ModelRef(name=arch.name), backend="llama.cpp", quant=quant,
                                        n_prompt=settings.n_prompt, n_gen=settings.n_gen,
                                        repetitions=settings.repetitions, threads=settings.threads,
                                        timeout_s=settings.timeout_s, decode_depth=depth)
            cap = settings.memory_cap_bytes or memory_cap_bytes()
            plan = synth.plan_file(arch, quant)
            needed = plan.load_memory_bytes(depth + settings.n_prompt + settings.n_gen)
            free_disk = shutil.disk_usage(cache_dir / "synthetic").free
            reason = None
            if refused:
                reason = f"larger than {refused}, which did not fit; not attempted"
            elif needed > cap:
                reason = (f"needs about {needed / GB:.1f} GB to load; the memory cap is {cap / GB:.1f} GB "
                          f"(available memory less a margin); not attempted")
            if reason:
                result = _unmeasured(arch, quant, request, device_id, pb.FAILURE_KIND_OOM, reason,
                                     "synthetic plan: weights + KV cache + compute buffers against the memory cap")
                refused = refused or f"{arch.name} {quant}"
            elif plan.file_bytes > free_disk:
                result = _unmeasured(arch, quant, request, device_id, pb.FAILURE_KIND_ERROR,
                                     f"the synthetic file needs {plan.file_bytes / GB:.1f} GB of disk, "
                                     f"{free_disk / GB:.1f} GB is free; not attempted", "disk space check")
            else:
                runs = _profile_synthetic(arch, quant, request, device_id, cache_dir, cap, previous,
                                          settings.collapse_fraction, settings.remeasure)
                if runs[0].failure:
                    refused = f"{arch.name} {quant}"
                else:
                    previous = runs[0]
                for result in runs[:-1]:
                    results.append(result)
                    on_result(result)
                result = runs[-1]
            results.append(result)
            on_result(result)
    return results


def capacity(results: list[pb.ProfileResult]) -> dict[str, str]:
    """The largest size that fits, per precision."""
    best: dict[str, pb.ProfileResult] = {}
    for r in results:
        if not r.failure and (r.quant not in best or r.model_n_params > best[r.quant].model_n_params):
            best[r.quant] = r
    return {quant: r.model_name for quant, r in best.items()}
