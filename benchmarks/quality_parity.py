#!/usr/bin/env python3
"""Compare `fleetfit-agent quality` with llama.cpp's own `llama-perplexity --kl-divergence` on the same files and text.

The reference is llama-perplexity built from the llama.cpp that fleetfit installs (the llama-cpp-python sdist)
with llama.cpp's default flags (benchmarks/llama_tools.py): a base pass over F16 with --kl-divergence-base, then
--kl-divergence per quant, with the same context (-c), one sequence per batch (-b = -c) and the same threads.
Both sides print mean KLD ± its standard error, the 99th percentile, perplexity and the same-top-token fraction,
side by side. Target: fleetfit's mean KLD within 15 % of llama-perplexity's for each quant. Exit status is 0
whether or not the target is met; only errors fail.
"""
import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import BenchError, agent_cmd, build_tool, last_line, main_guard, parse_json, physical_cores, run

TARGET = 0.15
_FIGURES = {"kld": r"Mean\s+KLD:\s+([-\d.]+)\s+±\s+([-\d.]+)", "p99": r"99\.0%\s+KLD:\s+([-\d.]+)",
            "ppl": r"Mean PPL\(Q\)\s+:\s+([-\d.]+)\s+±\s+([-\d.]+)", "top": r"Same top p:\s+([-\d.]+)\s+±"}


def llama_perplexity_figures(text):
    """The statistics llama-perplexity prints at the end of a --kl-divergence run."""
    out = {}
    for key, pattern in _FIGURES.items():
        m = re.search(pattern, text)
        if not m:
            raise BenchError(f"llama-perplexity printed no {key} line: {last_line(text)!r}")
        out[key] = float(m.group(1))
    out["top"] /= 100
    return out


def model_files(model, quants):
    r = run(agent_cmd() + ["models", "quantize", model, "--to", ",".join(["F16", *quants])])
    if r.returncode != 0:
        raise BenchError(f"fleetfit-agent models quantize failed: {last_line(r.stderr)}")
    paths = [Path(line) for line in r.stdout.split()]
    return dict(zip(["F16", *quants], paths))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="a real model fleetfit-agent can fetch")
    p.add_argument("--quants", default="Q8_0,Q4_0")
    p.add_argument("--text", help="UTF-8 text (default: the public-domain text fleetfit ships)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    quants = [q.strip().upper() for q in args.quants.split(",") if q.strip()]
    threads = args.threads or physical_cores()
    text = Path(args.text) if args.text else Path(__file__).resolve().parents[1] / "agent" / "texts" / "public-domain.txt"
    tool = build_tool("llama-perplexity", "default")
    files = model_files(args.model, quants)

    # the model's name: fleetfit-agent resolves the very files llama-perplexity reads, from its cache
    ours = run(agent_cmd() + ["quality", args.model, "--quants", ",".join(quants), "--text", str(text),
                              "--context", str(args.context), "--threads", str(threads), "--json"])
    if ours.returncode != 0:
        raise BenchError(f"fleetfit-agent quality failed: {last_line(ours.stderr)}")
    fleetfit = {row["quant"]: row for row in parse_json(ours.stdout, "fleetfit-agent quality")[1:]}

    common = ["-f", text, "-c", args.context, "-b", args.context, "-t", threads, "-ngl", "0"]
    theirs = {}
    with tempfile.TemporaryDirectory(prefix="quality-parity-") as tmp:
        base = Path(tmp) / "f16.kld"
        r = run([tool, "-m", files["F16"], "--kl-divergence-base", base, *common])
        if r.returncode != 0 or not base.exists():
            raise BenchError(f"llama-perplexity base pass failed: {last_line(r.stderr)}")
        for quant in quants:
            r = run([tool, "-m", files[quant], "--kl-divergence-base", base, "--kl-divergence", *common])
            if r.returncode != 0:
                raise BenchError(f"llama-perplexity --kl-divergence {quant} failed: {last_line(r.stderr)}")
            theirs[quant] = llama_perplexity_figures(r.stdout + r.stderr)

    print(f"{args.model}, context {args.context}, {threads} threads, text {text.name}; "
          f"llama-perplexity from {tool}")
    print("| quant | mean KLD fleetfit | mean KLD llama-perplexity | ratio | KLD p99 f / l | PPL f / l | "
          "same top f / l | within 15 % |")
    print("|---|---|---|---|---|---|---|---|")
    for quant in quants:
        f, l = fleetfit[quant], theirs[quant]
        ratio = f["kl_divergence_mean"] / l["kld"] if l["kld"] else float("nan")
        print(f"| {quant} | {f['kl_divergence_mean']:.6f} ± {f['kl_divergence_stderr']:.6f} | {l['kld']:.6f} | "
              f"{ratio:.3f} | {f['kl_divergence_p99']:.4f} / {l['p99']:.4f} | {f['perplexity']:.3f} / {l['ppl']:.3f} | "
              f"{f['same_top_token_fraction']:.3f} / {l['top']:.3f} | {'yes' if abs(ratio - 1) <= TARGET else 'NO'} |")


if __name__ == "__main__":
    main_guard(main)
