"""llama.cpp's compute buffer at contexts 128..8192 against coordinator/predict/scaling.py's compute_buffer_bytes.

    python benchmarks/compute_buffer.py [--models smollm2-135m,llama-3.2-1b] [--dir /tmp/synth]

Writes a synthetic Q4_0 GGUF per model (models/synth.py), creates a llama.cpp context at each context length
(weights mmap'd: only the buffers llama.cpp reserves are read from its log, nothing is timed) and prints the
compute, KV and output buffers llama.cpp reports beside the formulas. Loads no weights into RAM beyond the
pages the reservation touches, so it takes seconds per model.
"""

import argparse
import pathlib
import sys

from fleetfit.agent.backends import llama_cpp_runtime as rt
from fleetfit.coordinator.predict import scaling
from fleetfit.models import synth
from fleetfit.models.catalogue import CATALOGUE

CONTEXTS = (128, 512, 2048, 8192)


def buffers(path: pathlib.Path, n_ctx: int) -> dict[str, int]:
    """{"compute" | "KV" | "output": bytes} llama.cpp logs when it creates a context of n_ctx tokens."""
    C = rt.C
    C.llama_backend_init()
    C.llama_log_set(rt._log, None)
    params = C.llama_model_default_params()
    params.n_gpu_layers = 0
    model = C.llama_model_load_from_file(str(path).encode(), params)
    del rt._log_lines[:]
    ctx = C.llama_init_from_model(model, rt._context_params(n_ctx, rt.DEFAULT_N_BATCH, rt.DEFAULT_N_UBATCH, 1))
    sizes = rt.buffer_bytes(rt._log_lines)
    C.llama_free(ctx)
    C.llama_model_free(model)
    out: dict[str, int] = {}
    for (_, kind), n in sizes.items():
        out[kind] = out.get(kind, 0) + n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,llama-3.2-1b,tinyllama-1.1b")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/tmp/fleetfit-synth"))
    parser.add_argument("--quant", default="Q4_0")
    args = parser.parse_args()
    print(f"{'model':<16} {'ctx':>5} {'compute MiB':>11} {'formula':>8} {'err':>7} {'KV MiB':>7} {'formula':>8}")
    worst = 0.0
    for name in args.models.split(","):
        arch = CATALOGUE[name]
        path = args.dir / f"{name}-{args.quant}.gguf"
        if not path.exists():
            synth.write_synthetic(arch, args.quant, path)
        for n_ctx in CONTEXTS:
            got = buffers(path, n_ctx)
            compute, kv = got.get("compute", 0), got.get("KV", 0)
            formula = scaling.compute_buffer_bytes(arch, n_ctx)
            err = formula / compute - 1 if compute else float("nan")
            worst = max(worst, abs(err))
            print(f"{name:<16} {n_ctx:>5} {compute / 2**20:11.1f} {formula / 2**20:8.1f} {err:+7.1%} "
                  f"{kv / 2**20:7.1f} {scaling.kv_cache_held_bytes(arch, n_ctx) / 2**20:8.1f}", flush=True)
    print(f"worst compute-buffer error {worst:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
