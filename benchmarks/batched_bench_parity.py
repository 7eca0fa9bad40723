#!/usr/bin/env python3
"""Compare fleetfit's concurrency sweep (`fleetfit-agent profile --parallel`) with llama.cpp's `llama-batched-bench`.

For each GGUF file, the same threads, prompt and generation lengths and stream counts: llama-batched-bench's S_TG
(aggregate decode tok/s of N sequences decoded together, prompts not shared) against fleetfit's aggregate decode
tok/s at N streams. llama-batched-bench is built from the llama.cpp that fleetfit installs (the llama-cpp-python
sdist) with llama.cpp's default flags for this machine (benchmarks/llama_tools.py). The tools alternate and who
goes first swaps each round, so drift (thermal, noisy neighbours) hits both alike. Files: SmolLM2-135M at Q4_0 and
F16 (pulled and quantized by fleetfit-agent) and the TinyLlama-1.1B shape at Q4_0 (synthesized), unless --gguf
names others. Target: fleetfit >= 0.90 x S_TG at every stream count, by the ratio of the means; the ratio of the
best rounds is printed beside it (noise only slows a run, so on a busy machine the best rounds compare more
fairly). Exit status is 0 whether or not the target is met; only errors fail.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import BenchError, agent_cmd, build_tool, last_line, main_guard, parse_json, physical_cores, run

TARGET_RATIO = 0.90
DEFAULT_FILES = (("smollm2-135m", "Q4_0"), ("smollm2-135m", "F16"), ("tinyllama-1.1b", "Q4_0"))


def agent(*args):
    r = run(agent_cmd() + list(map(str, args)))
    if r.returncode != 0:
        raise BenchError(f"fleetfit-agent {' '.join(map(str, args[:3]))} failed: {last_line(r.stderr)}")
    return r.stdout


def default_ggufs():
    """label -> path of the default files, produced with fleetfit-agent as a user would."""
    found = {}
    for name, quant in DEFAULT_FILES:
        if name == "smollm2-135m":
            agent("models", "pull", name)
            path = last_line(agent("models", "quantize", name, "--to", quant))
        else:  # a catalogue shape: random weights, the real architecture
            path = last_line(agent("models", "synth", name, "--quant", quant))
        found[f"{name} {quant}"] = Path(path)
    return found


def batched_bench(binary, gguf, args):
    """{N: S_TG} from one llama-batched-bench run (jsonl output; prompts not shared, as fleetfit's)."""
    r = run([binary, "-m", gguf, "-t", args.threads, "-npp", args.npp, "-ntg", args.ntg,
             "-npl", ",".join(map(str, args.npl)), "--output-format", "jsonl"])
    if r.returncode != 0:
        raise BenchError(f"llama-batched-bench failed on {gguf} (exit {r.returncode}): {last_line(r.stderr)}")
    rows = [json.loads(line) for line in (r.stdout + "\n" + r.stderr).splitlines()
            if line.startswith("{") and '"speed_tg"' in line]
    found = {row["pl"]: row["speed_tg"] for row in rows if row["pp"] == args.npp and row["tg"] == args.ntg}
    if set(found) != set(args.npl):
        raise BenchError(f"llama-batched-bench reported stream counts {sorted(found)}, not {args.npl} "
                         f"(a context too small for npl x (npp + ntg)?)")
    return found


def fleetfit(gguf, args):
    """({N: aggregate decode samples}, backend build) from one `fleetfit-agent profile --parallel` run."""
    out = agent("profile", "--model", gguf, "--threads", args.threads, "--n-prompt", args.npp, "--n-gen", args.ntg,
                "--repetitions", args.repetitions, "--parallel", ",".join(map(str, args.npl)), "--idle-baseline", 0,
                "-o", "result")
    d = parse_json(out, "fleetfit-agent profile")
    points = {p["parallel"]: p for p in d.get("serving", [])}
    missing = [n for n in args.npl if n not in points or points[n].get("unsupported_reason")]
    if missing:
        raise BenchError(f"fleetfit measured no serving point for {missing} on {gguf}")
    return {n: points[n]["aggregate_decode_tokens_per_s"]["samples"] for n in args.npl}, d.get("backend_build", "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npl", type=lambda s: [int(n) for n in s.split(",")], default=[1, 4, 8],
                   help="stream counts (default 1,4,8)")
    p.add_argument("--npp", type=int, default=128, help="prompt tokens per stream (default 128)")
    p.add_argument("--ntg", type=int, default=64, help="generated tokens per stream (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--repetitions", type=int, default=1, help="fleetfit repetitions per round (default 1, as "
                                                                "llama-batched-bench runs each point once)")
    p.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    p.add_argument("--gguf", action="append", metavar="LABEL=PATH", help="a file to compare (repeatable); "
                   "default: SmolLM2-135M Q4_0 and F16, TinyLlama-1.1B shape Q4_0")
    p.add_argument("--sdist", help="already unpacked llama-cpp-python sdist to build from (skips the download)")
    p.add_argument("--json-out", help="write raw figures here as JSON")
    args = p.parse_args()

    binary = build_tool("llama-batched-bench", "default", args.sdist)
    ggufs = {label: Path(path) for label, _, path in (g.partition("=") for g in args.gguf)} if args.gguf \
        else default_ggufs()
    tools = ("llama-batched-bench", "fleetfit")
    samples = {label: {t: {n: [] for n in args.npl} for t in tools} for label in ggufs}
    build = ""
    for rnd in range(args.rounds):
        for label, gguf in ggufs.items():
            for tool in tools[rnd % 2:] + tools[:rnd % 2]:  # who goes first swaps each round
                print(f"round {rnd + 1}/{args.rounds} {label} {tool}", file=sys.stderr)
                if tool == "fleetfit":
                    found, build = fleetfit(gguf, args)
                    for n in args.npl:
                        samples[label][tool][n] += found[n]
                else:
                    for n, speed in batched_bench(binary, gguf, args).items():
                        samples[label][tool][n].append(speed)

    print(f"\nthreads={args.threads} npp={args.npp} ntg={args.ntg} rounds={args.rounds} "
          f"llama-batched-bench={binary} (llama.cpp default flags)\nfleetfit's llama.cpp: {build}\n")
    print(f"| file | streams | llama-batched-bench S_TG t/s | fleetfit aggregate decode t/s | fleetfit / S_TG | "
          f">= {TARGET_RATIO}? | best / best |")
    print("|---|---:|---:|---:|---:|---|---:|")
    report = {"threads": args.threads, "npp": args.npp, "ntg": args.ntg, "rounds": args.rounds, "tool": str(binary),
              "fleetfit_build": build, "results": []}
    for label, gguf in ggufs.items():
        for n in args.npl:
            theirs, ours = samples[label]["llama-batched-bench"][n], samples[label]["fleetfit"][n]
            ratio, best = statistics.fmean(ours) / statistics.fmean(theirs), max(ours) / max(theirs)
            cell = lambda xs: f"{statistics.fmean(xs):.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1f}"
            print(f"| {label} | {n} | {cell(theirs)} | {cell(ours)} | {ratio:.3f} | "
                  f"{'yes' if ratio >= TARGET_RATIO else 'NO'} | {best:.3f} |")
            report["results"].append({"file": label, "gguf": str(gguf), "streams": n, "s_tg": theirs,
                                      "fleetfit_aggregate": ours, "ratio": ratio, "best_ratio": best,
                                      "meets_target": ratio >= TARGET_RATIO})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main_guard(main)
