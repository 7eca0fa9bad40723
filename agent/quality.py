"""What a quantization costs in quality: KL divergence from the F16 reference, perplexity and same-top-token
fraction, by the method of llama.cpp's `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp).

The text is tokenized as llama-perplexity tokenizes it (one trailing newline dropped, BOS when the vocabulary
adds one, special tokens not parsed) and cut into context-sized chunks; each chunk is evaluated from an empty
cache with its first token set to BOS, and only positions n_ctx/2 .. n_ctx-2 are scored (each with a half
context before it). The reference pass stores each scored position's log-probabilities compressed as
llama-perplexity does (uint16 steps over at most 16 nats below the top, with a scale and an offset per
position); each quant's pass compares its logits with them: KLD = Σ p_ref · (log p_ref − log p_q) over the
reference's tokens above e^-16, NLL of the next token, and whether the two top tokens agree. Means carry
llama-perplexity's standard error, percentiles its interpolation.

The passes run in the isolated worker, one model at a time, on the logits a backend scores (llama.cpp's:
its `score`, given to the passes by llama_cpp_backend); the reference's log-probabilities go to a temporary file
between them.
"""

import dataclasses
import math
import pathlib
import tempfile

import numpy as np

from fleetfit.models import job_bounds
from fleetfit.v1 import fleetfit_pb2 as pb

DEFAULT_TEXT = pathlib.Path(__file__).parent / "texts" / "public-domain.txt"
DEFAULT_CONTEXT = job_bounds.QUALITY_DEFAULT_CONTEXT
MAX_TEXT_BYTES = 4 << 20
MAX_REFERENCE_BYTES = 2 << 30  # the reference's compressed log-probabilities: positions x vocabulary x 2 bytes
METHOD = ("llama-perplexity --kl-divergence method: context-sized chunks from an empty cache, BOS first, second "
          "half of each scored; reference log-probs compressed to uint16 as llama.cpp does")


@dataclasses.dataclass(frozen=True)
class QualityResult:
    quant: str
    reference: str  # the precision compared against (F16)
    context_tokens: int
    n_positions: int  # scored positions
    kl_divergence_mean: float | None  # None for the reference itself
    kl_divergence_stderr: float | None
    kl_divergence_p99: float | None
    perplexity: float
    perplexity_stderr: float
    same_top_token_fraction: float | None
    file_bytes: int | None = None
    provenance: dict = dataclasses.field(default_factory=lambda: {"kind": "measured", "method": METHOD,
                                                                  "scope": "this device, llama.cpp"})


def read_text(path: pathlib.Path | None) -> str:
    """The evaluation text as llama-perplexity -f reads it (one trailing newline dropped); bounded, UTF-8."""
    from fleetfit.models.errors import ModelError
    from fleetfit.models.gguf_file import open_regular

    path = pathlib.Path(path or DEFAULT_TEXT)
    try:
        f, size = open_regular(path)
    except ModelError as exc:
        raise ModelError(str(exc).replace("model file", "text file")) from None
    with f:
        if size > MAX_TEXT_BYTES:
            raise ModelError(f"text file is {size:,} bytes, more than {MAX_TEXT_BYTES:,}: {path}")
        data = f.read(MAX_TEXT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"text file is not UTF-8: {path}") from None
    return text[:-1] if text.endswith("\n") else text


# -- llama-perplexity's arithmetic, in float32 with double sums as it does ------------------------------------

def compress(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """perplexity.cpp's log_softmax(n_vocab, logits, uint16_t * log_prob, tok) for each row:
    (scale, min_log_prob, uint16 steps, the row's log-sum-exp with its max)."""
    logits = logits.astype(np.float32, copy=False)
    top = logits.max(axis=1)
    low = np.maximum(logits.min(axis=1), top - np.float32(16))
    sum_exp = np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)
    log_sum_exp = np.log(sum_exp).astype(np.float32)
    min_log_prob = (low - top - log_sum_exp).astype(np.float32)
    scale = ((top - low) / np.float32(65535)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    steps = np.rint(inv_scale[:, None] * (logits - low[:, None]))  # nearest_int: round half to even
    steps = np.where(logits > low[:, None], steps, 0).astype(np.uint16)
    return scale, min_log_prob, steps, (top + log_sum_exp).astype(np.float32)


@dataclasses.dataclass
class Sums:
    """kl_divergence_result: sums over the scored positions."""
    nll: float = 0.0
    nll2: float = 0.0
    nll_base: float = 0.0
    nll_base2: float = 0.0
    kld: list = dataclasses.field(default_factory=list)
    same_top: int = 0
    count: int = 0


def compare(logits: np.ndarray, next_tokens: np.ndarray, scale: np.ndarray, min_log_prob: np.ndarray,
            steps: np.ndarray, sums: Sums) -> None:
    """perplexity.cpp's log_softmax(n_vocab, logits, const uint16_t * base_log_prob, tok, kld) for each row."""
    logits = logits.astype(np.float32, copy=False)
    rows = np.arange(len(logits))
    top = logits.max(axis=1)
    top_token = logits.argmax(axis=1)  # the first maximum, as the C loop finds it
    log_sum_exp = np.log(np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
    nll = top + log_sum_exp - logits[rows, next_tokens]
    log_p_base = (scale[:, None] * steps.astype(np.float32) + min_log_prob[:, None]).astype(np.float32)
    nll_base = -log_p_base[rows, next_tokens]
    terms = np.where(log_p_base > -16, np.exp(log_p_base) * (log_p_base - logits + (top + log_sum_exp)[:, None]), 0)
    kld = terms.astype(np.float32).sum(axis=1, dtype=np.float64)
    sums.nll += float(nll.sum(dtype=np.float64))
    sums.nll2 += float((nll.astype(np.float64) ** 2).sum())
    sums.nll_base += float(nll_base.sum(dtype=np.float64))
    sums.nll_base2 += float((nll_base.astype(np.float64) ** 2).sum())
    sums.kld.extend(kld.tolist())
    sums.same_top += int((top_token == log_p_base.argmax(axis=1)).sum())
    sums.count += len(logits)


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile: linear between the two nearest sorted values."""
    p = fraction * (len(sorted_values) - 1)
    i = int(p)
    return float((1 - (p - i)) * sorted_values[i] + (p - i) * sorted_values[min(i + 1, len(sorted_values) - 1)])


def summary(quant: str, reference: str, context: int, sums: Sums, file_bytes: int | None) -> QualityResult:
    log_ppl, log_ppl_err = mean_and_uncertainty(sums.nll, sums.nll2, sums.count)
    kld = np.sort(np.array(sums.kld, dtype=np.float32))
    kld_mean, kld_err = mean_and_uncertainty(float(np.sum(kld, dtype=np.float64)),
                                             float(np.sum(kld.astype(np.float64) ** 2)), sums.count)
    return QualityResult(quant, reference, context, sums.count, kld_mean, kld_err, percentile(kld, 0.99),
                         math.exp(log_ppl), math.exp(log_ppl) * log_ppl_err, sums.same_top / sums.count, file_bytes)


def reference_summary(reference: str, context: int, sums: Sums, file_bytes: int | None) -> QualityResult:
    log_ppl, log_ppl_err = mean_and_uncertainty(sums.nll_base, sums.nll_base2, sums.count)
    return QualityResult(reference, reference, context, sums.count, None, None, None, math.exp(log_ppl),
                         math.exp(log_ppl) * log_ppl_err, None, file_bytes)


# -- the two passes, inside the worker ----------------------------------------------------------------------

def _steps_path(reference: str) -> str:
    """Where the reference's uint16 log-probabilities live, beside its .npz (memory-mapped, not loaded)."""
    return reference.removesuffix(".npz") + ".steps.npy"


class QualityError(Exception):
    """A pass that cannot be made as asked; the message is one line."""


def reference_pass(score, text: str, n_ctx: int, out: str) -> dict:
    """Evaluate the reference and write its compressed log-probabilities (and the tokens) to `out` (.npz).
    `score(n_ctx, text=..., tokens=...)`: (tokens, n_vocab, chunks of scored logits), as llama-perplexity scores."""
    tokens, n_vocab, chunks = score(n_ctx, text=text)
    n_chunks, first = len(tokens) // n_ctx, n_ctx // 2
    n_scored = n_ctx - 1 - first
    if n_chunks * n_scored * (n_vocab + 4) * 2 > MAX_REFERENCE_BYTES:
        raise QualityError(f"{n_chunks} chunks of {n_scored} positions over {n_vocab} tokens is more reference "
                           f"data than {MAX_REFERENCE_BYTES >> 30} GiB; use a shorter text")
    if n_chunks * n_scored < 100:
        raise QualityError(f"{n_chunks * n_scored} scored positions; llama-perplexity wants at least 100 "
                           f"(a longer text or a larger context)")
    scale = np.zeros((n_chunks, n_scored), np.float32)
    min_log_prob = np.zeros((n_chunks, n_scored), np.float32)
    steps = np.lib.format.open_memmap(_steps_path(out), mode="w+", dtype=np.uint16,
                                      shape=(n_chunks, n_scored, n_vocab))
    for chunk, logits in chunks:
        scale[chunk], min_log_prob[chunk], steps[chunk], _ = compress(logits)
    steps.flush()
    np.savez(out, tokens=np.array(tokens, np.int32), scale=scale, min_log_prob=min_log_prob,
             n_ctx=np.int32(n_ctx))
    return {"n_tokens": len(tokens), "n_chunks": n_chunks, "n_vocab": n_vocab}


def quant_pass(score, reference: str) -> dict:
    """Evaluate a quant on the reference's tokens and compare with its log-probabilities: Sums as a dict."""
    with np.load(reference) as ref:
        tokens, scale, min_log_prob, n_ctx = ref["tokens"], ref["scale"], ref["min_log_prob"], int(ref["n_ctx"])
    steps = np.load(_steps_path(reference), mmap_mode="r")
    _, n_vocab, chunks = score(n_ctx, tokens=tokens.tolist())
    if n_vocab != steps.shape[2]:
        raise QualityError(f"the model's vocabulary ({n_vocab}) is not the reference's ({steps.shape[2]})")
    first, sums = n_ctx // 2, Sums()
    for chunk, logits in chunks:
        start = chunk * n_ctx + first
        compare(logits, tokens[start + 1:start + 1 + len(logits)], scale[chunk], min_log_prob[chunk], steps[chunk],
                sums)
    return dataclasses.asdict(sums)


# -- the agent side ------------------------------------------------------------------------------------------

def measure(reference_path: pathlib.Path, quant_paths: dict[str, pathlib.Path], text: str, n_ctx: int,
            threads: int, timeout_s, reference: str = "F16", device: str = "", chunks: int = 0) -> list[QualityResult]:
    """The reference's row, then one row per quant, each pass in its own worker process (a bar of passes on a
    terminal's stderr); `chunks`: the text's first N chunks only (0: all); `timeout_s`: seconds per pass, or a
    Deadline over them all."""
    from fleetfit.agent.isolation import run_worker
    from fleetfit.models import progress

    with tempfile.TemporaryDirectory(prefix="fleetfit-quality-") as tmp, \
            progress.bar(f"quality passes (reference {reference}, then {', '.join(quant_paths)})",
                         total=1 + len(quant_paths)) as advance:
        base = str(pathlib.Path(tmp) / "reference.npz")
        run_worker({"op": "quality_reference", "model_path": str(reference_path), "text": text, "n_ctx": n_ctx,
                    "threads": threads, "out": base, "device": device, "chunks": chunks}, timeout_s, phase="quality reference pass")
        advance(1)
        rows = []
        for quant, path in quant_paths.items():
            sums = Sums(**run_worker({"op": "quality_compare", "model_path": str(path), "reference": base,
                                      "threads": threads, "device": device}, timeout_s,
                                     phase=f"quality pass of {quant}"))
            if not rows:
                rows.append(reference_summary(reference, n_ctx, sums, reference_path.stat().st_size))
            rows.append(summary(quant, reference, n_ctx, sums, path.stat().st_size))
            advance(1)
    return rows


def message(row: QualityResult, device_id: str, model_name: str, text_sha256: str, model_sha256: str,
            reference_sha256: str) -> pb.QualityResult:
    """One quant's row as the QualityResult a device reports (AgentService.ReportQuality)."""
    import time
    import uuid

    from fleetfit.v1.words import parse_dict

    return pb.QualityResult(
        result_id=str(uuid.uuid4()), device_id=device_id, model_name=model_name, quant=row.quant,
        reference_quant=row.reference, context_tokens=row.context_tokens, n_positions=row.n_positions,
        kl_divergence_mean=row.kl_divergence_mean, kl_divergence_stderr=row.kl_divergence_stderr,
        kl_divergence_p99=row.kl_divergence_p99, perplexity=row.perplexity, perplexity_stderr=row.perplexity_stderr,
        same_top_token_fraction=row.same_top_token_fraction, file_bytes=row.file_bytes or 0, text_sha256=text_sha256,
        created_unix_s=time.time(), model_sha256=model_sha256, reference_sha256=reference_sha256,
        provenance=parse_dict(dict(row.provenance), pb.Provenance()))


def job_reference(model, cache_dir: pathlib.Path, threads: int, deadline) -> pathlib.Path:
    """The file a job's quality pass compares with (a ModelRef's highest precision here): a stored file itself when
    it is F32/F16/BF16, else F16 derived from it with llama.cpp's quantizer (as SmolLM2's F16 is derived from its
    Q4_1); a real model's F16 likewise. ModelError (one line) for a model without real weights."""
    from fleetfit.agent import model_cache, model_fetch
    from fleetfit.models.errors import ModelError
    from fleetfit.models.real_models import REAL_MODELS

    if model.sha256:
        stored = model_fetch.stored_file(cache_dir, model.sha256)
        if stored is None:
            raise ModelError(f"stored model {model.name} is not in this device's cache")
        if model_cache.inspect(stored, True, deadline).quant in model_fetch.HIGH_PRECISIONS:
            return stored
        return model_cache.derive(stored, "F16", model_fetch.derived_file(stored, "F16"), threads, deadline)
    if model.name.lower() in REAL_MODELS:
        return model_cache.resolve(model.name, "F16", cache_dir, threads, deadline).path
    raise ModelError(f"a quality pass needs real weights: {model.name} is a shape with random weights here")


def for_job(request, result, cache_dir: pathlib.Path, deadline) -> pb.QualityResult | None:
    """A job's quality pass (ProfileRequest.quality) after its successful profile `result`: the run's file against
    the model's highest precision here (job_reference), on the shipped text. None when the run's file is that
    reference (nothing to compare). ModelError or WorkerFailure when it cannot be made."""
    import hashlib

    from fleetfit.agent import model_cache, model_fetch
    from fleetfit.models.gguf_file import sha256_of

    threads = result.threads or 1
    reference = job_reference(request.model, cache_dir, threads, deadline)
    quant_file = pathlib.Path(result.model_file)
    with model_cache.in_use(cache_dir, reference), model_cache.in_use(cache_dir, quant_file):
        stored = request.model.sha256 and model_fetch.stored_file(cache_dir, request.model.sha256)
        reference_sha256 = request.model.sha256 if reference == stored else \
            sha256_of(reference, check=deadline.checker("hashing of the quality reference"))  # verified, or made here
        if reference_sha256 == result.model_sha256:
            return None
        reference_quant = model_cache.inspect(reference, True, deadline).quant
        text = read_text(None)
        rows = measure(reference, {result.quant: quant_file}, text,
                       request.quality.context_tokens or DEFAULT_CONTEXT, threads, deadline, reference_quant,
                       request.device, request.quality.chunks)
    return message(rows[1], result.device_id, request.model.name, hashlib.sha256(text.encode()).hexdigest(),
                   result.model_sha256, reference_sha256)
