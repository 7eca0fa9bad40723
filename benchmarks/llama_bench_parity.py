#!/usr/bin/env python3
"""Compare `fleetfit-agent profile` against llama.cpp's own `llama-bench` on the same GGUF files.

The reference is what users run: llama-bench built from the llama.cpp that fleetfit installs (the
llama-cpp-python sdist) with llama.cpp's default flags for this machine (benchmarks/llama_tools.py).
`--portable` adds a third column, llama-bench built with fleetfit's portable fall-back flags. Runs
alternate between the tools, and who goes first swaps each round, so drift (thermal, noisy neighbours)
hits all equally. Target: fleetfit >= 0.95 x llama-bench (default build) for prefill and decode. Exit
status is 0 whether or not the targets are met; only errors fail.
"""
import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_tools import BenchError, agent_cmd, build_tool, last_line, main_guard, parse_json, physical_cores, run

TARGET_RATIO, RSS_TOL = 0.95, 0.10


def find_ggufs(args):
    """Map quant -> GGUF path, from --gguf, --models-dir, or fleetfit-agent's model store."""
    found = {}
    for spec in args.gguf or []:
        quant, _, path = spec.partition("=")
        found[quant.upper()] = Path(path)
    if args.models_dir:
        for q in args.quants:
            hits = sorted(Path(args.models_dir).rglob(f"*-{q}.gguf"))
            if hits and q not in found:
                found[q] = hits[0]
    missing = [q for q in args.quants if q not in found]
    if missing:
        def listed():
            r = run(agent_cmd() + ["models", "list", "--json"])
            if r.returncode != 0:
                raise BenchError(f"fleetfit-agent models list failed: {last_line(r.stderr)}")
            return {m["quant"].upper(): Path(m["path"]) for m in parse_json(r.stdout, "models list") if m["name"] == args.model}
        have = listed()
        if any(q not in have for q in missing):  # produce them with the agent, as a user would
            for sub in (["models", "pull", args.model], ["models", "quantize", args.model, "--to", ",".join(missing)]):
                r = run(agent_cmd() + sub)
                if r.returncode != 0:
                    raise BenchError(f"fleetfit-agent {' '.join(sub)} failed: {last_line(r.stderr)}")
            have = listed()
        found.update({q: have[q] for q in missing if q in have})
    for q in args.quants:
        if q not in found or not found[q].exists():
            raise BenchError(f"no GGUF for {q} (looked for {found.get(q, 'nothing')})")
    return found


def llama_bench(binary, gguf, args):
    """Return {'pp': [t/s samples], 'tg': [...]} from one llama-bench invocation."""
    r = run([binary, "-m", gguf, "-t", args.threads, "-p", args.n_prompt, "-n", args.n_gen,
             "-r", args.repetitions, "-lm", "none", "-o", "json"])
    if r.returncode != 0:
        raise BenchError(f"llama-bench failed on {gguf} (exit {r.returncode}): {last_line(r.stderr)}")
    out = {}
    for e in parse_json(r.stdout, "llama-bench"):
        test = "pp" if e["n_prompt"] > 0 and e["n_gen"] == 0 else "tg"
        out[test] = e.get("samples_ts") or [e["avg_ts"]]
    return out


def fleetfit(gguf, args):
    """Return pp/tg samples plus peak RSS from one `fleetfit-agent profile` invocation."""
    r = run(agent_cmd() + ["profile", "--model", gguf, "--threads", args.threads, "--n-prompt", args.n_prompt,
                           "--n-gen", args.n_gen, "--repetitions", args.repetitions, "--json"])
    if r.returncode != 0:
        raise BenchError(f"fleetfit-agent profile failed on {gguf} (exit {r.returncode}): "
                         f"{last_line(r.stderr)}")
    rows = parse_json(r.stdout, "fleetfit-agent profile")  # llama-bench's rows: one pp, one tg
    tests = {("pp" if e.get("n_gen") == 0 else "tg"): e for e in rows if isinstance(e, dict)} \
        if isinstance(rows, list) else {}
    if set(tests) != {"pp", "tg"} or tests["tg"].get("avg_ts") is None:
        raise BenchError("fleetfit-agent profile printed no pp and tg rows")
    samples = lambda t: [float(x) for x in tests[t].get("samples_ts") or [tests[t]["avg_ts"]]]
    return {"pp": samples("pp"), "tg": samples("tg"), "peak_rss_bytes": int(tests["tg"].get("peak_rss_bytes") or 0)}


def llama_bench_rss(binary, gguf, args):
    """Max RSS in bytes of a single llama-bench run, as /usr/bin/time -v reports it."""
    if not Path("/usr/bin/time").exists():
        raise BenchError("/usr/bin/time is missing (install it: apt-get install -y time), or pass --skip-memory")
    r = run(["/usr/bin/time", "-v", binary, "-m", gguf, "-t", args.threads, "-p", args.n_prompt,
             "-n", args.n_gen, "-r", "1", "-lm", "none"])
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise BenchError(f"llama-bench under /usr/bin/time failed (exit {r.returncode})")
    return int(m.group(1)) * 1024


def stats(xs):
    return {"mean": statistics.fmean(xs), "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "samples": xs}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quants", type=lambda s: [q.strip().upper() for q in s.split(",")], default=["F16", "Q8_0", "Q4_0"])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=128)
    p.add_argument("--repetitions", type=int, default=3, help="repetitions per tool invocation")
    p.add_argument("--model", default="smollm2-135m", help="fleetfit model name to pull/quantize")
    p.add_argument("--models-dir", help="look for *-<QUANT>.gguf here instead of asking fleetfit-agent")
    p.add_argument("--gguf", action="append", metavar="QUANT=PATH", help="explicit GGUF for a quant (repeatable)")
    p.add_argument("--sdist", help="already unpacked llama-cpp-python sdist to build from (skips the download)")
    p.add_argument("--portable", action="store_true", help="add llama-bench built with fleetfit's portable flags")
    p.add_argument("--skip-memory", action="store_true", help="skip the /usr/bin/time RSS comparison")
    p.add_argument("--json-out", help="write raw figures here as JSON")
    args = p.parse_args()

    tools = {"llama-bench": build_tool("llama-bench", "default", args.sdist)}
    if args.portable:
        tools["llama-bench portable"] = build_tool("llama-bench", "portable", args.sdist)
    names = [*tools, "fleetfit"]
    ggufs = find_ggufs(args)
    samples = {q: {t: {"pp": [], "tg": []} for t in names} | {"rss": []} for q in args.quants}
    for rnd in range(args.rounds):
        for q in args.quants:
            # Rotate who goes first each round, so no tool always runs on a warmer page cache/CPU.
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for tool in order:
                print(f"round {rnd + 1}/{args.rounds} {q} {tool}", file=sys.stderr)
                res = fleetfit(ggufs[q], args) if tool == "fleetfit" else llama_bench(tools[tool], ggufs[q], args)
                for test in ("pp", "tg"):
                    samples[q][tool][test] += res[test]
                if tool == "fleetfit":
                    samples[q]["rss"].append(res["peak_rss_bytes"])

    report = {"threads": args.threads, "rounds": args.rounds, "repetitions": args.repetitions,
              "tools": {t: str(b) for t, b in tools.items()}, "results": []}
    print(f"\nthreads={args.threads} rounds={args.rounds} repetitions={args.repetitions} "
          f"llama-bench={tools['llama-bench']} (llama.cpp default flags)\n")
    extra = " | llama-bench portable t/s" if args.portable else ""
    print(f"| quant | test | llama-bench (default build) t/s{extra} | fleetfit t/s | fleetfit / llama-bench | >= {TARGET_RATIO}? |")
    print("|---|---|---|" + ("---|" if args.portable else "") + "---|---|---|")
    for q in args.quants:
        for test, name in (("pp", f"pp{args.n_prompt}"), ("tg", f"tg{args.n_gen}")):
            st = {t: stats(samples[q][t][test]) for t in names}
            ratio = st["fleetfit"]["mean"] / st["llama-bench"]["mean"]
            ok = ratio >= TARGET_RATIO
            cell = lambda t: f"{st[t]['mean']:.1f} ± {st[t]['stdev']:.1f}"
            portable = f" | {cell('llama-bench portable')}" if args.portable else ""
            print(f"| {q} | {name} | {cell('llama-bench')}{portable} | {cell('fleetfit')} | {ratio:.3f} | {'yes' if ok else 'NO'} |")
            report["results"].append({"quant": q, "test": name, "gguf": str(ggufs[q]), "figures": st,
                                      "ratio": ratio, "meets_target": ok})
    if not args.skip_memory:
        report["memory"] = []
        print()
        for q in args.quants:
            lb_rss = llama_bench_rss(tools["llama-bench"], ggufs[q], args)
            ff_rss = max(samples[q]["rss"])
            ratio = ff_rss / lb_rss
            ok = abs(ratio - 1) <= RSS_TOL
            print(f"memory ({q}): fleetfit peak RSS {ff_rss / 2**20:.1f} MiB vs llama-bench max RSS "
                  f"{lb_rss / 2**20:.1f} MiB, ratio {ratio:.3f}, within 10%? {'yes' if ok else 'NO'}")
            report["memory"].append({"quant": q, "fleetfit_peak_rss_bytes": samples[q]["rss"],
                                     "llama_bench_max_rss_bytes": lb_rss, "ratio": ratio, "within_tolerance": ok})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main_guard(main)
