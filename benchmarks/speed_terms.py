"""Where a token's time goes on this machine: llama.cpp runs on synthetic files whose shapes differ in one axis at a
time, the measured cost of each axis, and the fitted speed terms (coordinator/predict/speed_model.py) beside them.

    python benchmarks/speed_terms.py [--quant Q4_0] [--n-gen 32] [--repetitions 3] [--results DIR]

Every shape is SmolLM2-135M's (576 wide, 30 layers, 9 query / 3 KV heads of 64, vocabulary 49152, tied) with one
axis changed:
- vocabulary 8k .. 128k: the output projection over the vocabulary (Q6_K in a Q4_0 file);
- layers 8 .. 60: what a layer costs beyond its weights (graph nodes, thread barriers);
- width 384 .. 1536 (heads of 64): the weight matrices streamed;
- decode depth 0 .. 4096, with 1, 3 and 9 KV heads: the KV cache read (bytes, GQA-aware) against the attention
  work (scores: query heads x positions, which GQA does not reduce).
Each sweep prints ms per token at each point and the slope against its axis (least squares), then one speed-terms
fit over every run, its terms, and each run's time split into them with its error. Runs are kept in --results (one
JSON each), so a rerun measures only what is missing. Decode and prefill use llama-bench's tests (tg, pp) at
--n-gen / --n-prompt.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile

import numpy as np
from google.protobuf import json_format

from fleetfit.coordinator.predict import speed_model
from fleetfit.models.catalogue import CATALOGUE, Architecture
from fleetfit.models.roofline import mean_decode_context
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict

BASE = CATALOGUE["smollm2-135m"]
SWEEPS = {
    "vocabulary": [dataclasses.replace(BASE, vocab=v) for v in (8192, 32768, 49152, 131072)],
    "layers": [dataclasses.replace(BASE, n_layers=n) for n in (8, 16, 30, 60)],
    "width": [dataclasses.replace(BASE, hidden=h, n_heads=h // 64, n_kv_heads=h // 192, ffn=h * 8 // 3)
              for h in (384, 768, 1152, 1536)],
}
DEPTHS = (0, 256, 1024, 4096)
KV_HEADS = (1, 3, 9)  # 9 query heads throughout: GQA 9, 3, 1


@dataclasses.dataclass(frozen=True)
class Run:
    sweep: str
    arch: Architecture
    depth: int = 0

    @property
    def name(self) -> str:
        a = self.arch
        return f"terms-v{a.vocab}-l{a.n_layers}-h{a.hidden}-kv{a.n_kv_heads}-d{self.depth}"


def runs() -> list[Run]:
    out = [Run(sweep, arch) for sweep, archs in SWEEPS.items() for arch in archs]
    out += [Run("depth", dataclasses.replace(BASE, n_kv_heads=kv), d) for kv in KV_HEADS for d in DEPTHS]
    unique = {}
    for r in out:
        unique.setdefault(r.name, r)
    return list(unique.values())


def measure(run: Run, quant: str, args, folder: pathlib.Path) -> pb.ProfileResult:
    """One synthetic file written, profiled by fleetfit-agent's harness (llama-bench's pp and tg), deleted."""
    from fleetfit.agent import inventory, profiling
    from fleetfit.models.synth import write_synthetic

    saved = folder / f"{run.name}-{quant}.json"
    if saved.exists():
        return parse_dict(json.loads(saved.read_text()), pb.ProfileResult())
    arch = dataclasses.replace(run.arch, name=run.name.rsplit("-d", 1)[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic(arch, quant, pathlib.Path(tmp) / f"{arch.name}-{quant}.gguf", force=True)
        request = profiling.make_request(str(path), None, n_prompt=args.n_prompt, n_gen=args.n_gen,
                                         repetitions=args.repetitions, idle_baseline_s=0, decode_depth=run.depth)
        result = profiling.profile(request, inventory.default_device_id(), pathlib.Path(tmp))
    if result.failure:
        sys.exit(f"{run.name}: {result.error}")
    result.backend_build = result.backend_build[:200]
    saved.write_text(json_format.MessageToJson(result, preserving_proto_field_name=True) + "\n")
    return result


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line y = a + b·x: (a, b)."""
    b, a = np.polyfit(np.array(xs, float), np.array(ys, float), 1)
    return float(a), float(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="Q4_0")
    parser.add_argument("--n-prompt", type=int, default=64)
    parser.add_argument("--n-gen", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("/tmp/fleetfit-speed-terms"))
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    measured = []
    for run in runs():
        r = measure(run, args.quant, args, args.results)
        measured.append((run, r))
        print(f"  {run.name}: decode {r.decode_tokens_per_s.mean:.1f} ± {r.decode_tokens_per_s.stdev:.1f} tok/s, "
              f"prefill {r.prefill_tokens_per_s.mean:.0f} tok/s", flush=True)

    ms = lambda r: 1e3 / r.decode_tokens_per_s.mean
    print(f"\ndecode, {args.quant}, tg{args.n_gen} x {args.repetitions} (ms per token)")
    axes = {"vocabulary": ("vocab", "1k rows", 1e3), "layers": ("n_layers", "layer", 1),
            "width": ("hidden", "64 wide", 64)}
    for sweep, (field, unit, per) in axes.items():
        pts = [(getattr(run.arch, field), ms(r), run.arch) for run, r in measured  # the shared base shape too
               if run.depth == 0 and run.arch in SWEEPS[sweep]]
        pts.sort()
        a, b = slope([x for x, _, _ in pts], [y for _, y, _ in pts])
        line = ", ".join(f"{x}: {y:.2f}" for x, y, _ in pts)
        extra = ""
        if sweep == "vocabulary":  # the output matrix's bytes per vocabulary row, at the rate the slope implies
            row_bytes = BASE.hidden * speed_model.bits("Q6_K") / 8
            extra = f" (output matrix streamed at {row_bytes / (b / 1e3) / 1e9:.1f} GB/s)"
        print(f"  {sweep:<10} {line}  ->  {b * per * 1e3:.1f} µs per {unit}{extra}")
    kv_bytes = lambda run: speed_model.context_terms(run.arch, mean_decode_context(args.n_gen, run.depth))["KV bytes"]
    for kv in KV_HEADS:
        pts = sorted((run.depth, ms(r), kv_bytes(run)) for run, r in measured
                     if run.arch == dataclasses.replace(BASE, n_kv_heads=kv))
        a, b = slope([d for d, _, _ in pts], [y for _, y, _ in pts])
        per_byte = slope([k for _, _, k in pts], [y for _, y, _ in pts])[1]
        print(f"  depth, {kv} KV heads: " + ", ".join(f"{d}: {y:.2f}" for d, y, _ in pts)
              + f"  ->  {b * 1e6:.2f} µs per 1k positions; KV read at {1 / per_byte / 1e6:.1f} GB/s")

    samples = [speed_model.Sample(run.arch, args.quant, mean_decode_context(args.n_gen, run.depth),
                                  r.decode_tokens_per_s.mean, label=run.name) for run, r in measured]
    model = speed_model.fit(samples, "decode")
    print(f"\nfitted on all {len(samples)} runs: {model.text()}")
    print(f"  {'run':<36} {'ms/token':>8} {'fit':>7} {'err':>7} | weights     KV  layers  token (ms)")
    for s in samples:
        parts = model.parts(s.arch, s.quant, s.positions)
        total = sum(parts.values())
        print(f"  {s.label:<36} {1e3 / s.tps:8.2f} {total * 1e3:7.2f} {s.tps * total - 1:+7.1%} | "
              + " ".join(f"{v * 1e3:6.2f}" for v in parts.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
