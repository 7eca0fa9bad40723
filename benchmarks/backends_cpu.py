#!/usr/bin/env python3
"""Backends side by side on this CPU: torch fp32/int8, ONNX Runtime fp32/int8/int4 and llama.cpp F16/Q8_0/Q4_0
on SmolLM2-135M, each through `profiling.profile` (the agent's child-process harness), one after another.

    python benchmarks/backends_cpu.py [--n-prompt 128] [--n-gen 32] [--repetitions 3] [--cache-dir DIR]

torch and ONNX Runtime load the weights of the F16 ladder file (which llama.cpp derives from the shipped
Q4_1), so every row runs the same numbers. Achieved GB/s = weight bytes read per token x decode tokens/s.
"""
import argparse
import pathlib
import sys

from fleetfit.agent import model_cache, profiling

ROWS = [("llama.cpp", "F16"), ("llama.cpp", "Q8_0"), ("llama.cpp", "Q4_0"), ("torch", "fp32"), ("torch", "int8"),
        ("torch", "int4"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "int4")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-prompt", type=int, default=128)
    parser.add_argument("--n-gen", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache-dir", type=pathlib.Path, default=model_cache.default_cache_dir())
    args = parser.parse_args()
    threads = args.threads or profiling.default_threads()
    f16 = model_cache.resolve("smollm2-135m", "F16", args.cache_dir, threads).path
    print(f"SmolLM2-135M, pp{args.n_prompt} / tg{args.n_gen}, {args.repetitions} repetitions, {threads} threads\n")
    print("| backend | precision | weights MiB | prefill t/s | decode t/s | achieved GB/s | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for backend, precision in ROWS:
        model = "smollm2-135m" if backend == "llama.cpp" else str(f16)
        request = profiling.make_request(model, precision, backend, args.n_prompt, args.n_gen, args.repetitions,
                                         threads, idle_baseline_s=0, device="cpu" if backend == "torch" else "")
        r = profiling.profile(request, "bench", args.cache_dir)
        if r.failure:
            print(f"| {backend} | {precision} | | failed: {profiling.failure_name(r.failure)}: {r.error[:80]} | | | |")
            continue
        weights = r.weight_bytes if r.HasField("weight_bytes") else r.model_file_bytes
        gbps = r.roofline.achieved_gb_per_s if r.roofline.HasField("achieved_gb_per_s") else None
        print(f"| {backend} | {precision} | {weights / 2**20:.1f} "
              f"| {r.prefill_tokens_per_s.mean:.1f} ± {r.prefill_tokens_per_s.stdev:.1f} "
              f"| {r.decode_tokens_per_s.mean:.1f} ± {r.decode_tokens_per_s.stdev:.1f} "
              f"| {f'{gbps:.1f}' if gbps is not None else 'n/a'} | {r.peak_rss_bytes / 2**20:.0f} |", flush=True)
    print("\nweights: llama.cpp = GGUF file; torch = tensors held (int8/int4 keep a bf16 embedding table); "
          "ONNX Runtime = .onnx file (the tied embedding is stored twice).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
