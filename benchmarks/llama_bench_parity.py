#!/usr/bin/env python3
"""Compare `fleetfit-agent profile` against llama.cpp's own `llama-bench` on the same GGUF files.

llama-bench is built from the llama.cpp vendored in the llama-cpp-python sdist that fleetfit uses, with
the CPU flags of scripts/install.sh, so both sides run the same kernels. The build lives in the user
cache, never in the repo. Runs alternate between the two tools so drift (thermal, noisy neighbours)
hits both equally. Exit status is 0 whether or not the parity targets are met; only errors fail.
"""
import argparse, hashlib, json, os, platform, re, shutil, statistics, subprocess, sys, tarfile, tempfile
from pathlib import Path

# The release and CPU flags scripts/install.sh builds llama-cpp-python with (VMs may advertise AMX
# without enabling it, so never a native build), read from the one file that declares them.
BUILD_ENV = dict(re.findall(r'^(\w+)="([^"]*)"', (Path(__file__).resolve().parents[1] / "scripts" /
                                                 "llama-cpp-build.env").read_text(), re.M))
LLAMA_CPP_PYTHON = BUILD_ENV["LLAMA_CPP_PYTHON"]
X86_FLAGS = BUILD_ENV["LLAMA_CMAKE_ARGS_X86_64"]
EXTRA_FLAGS = ("-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
               "-DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release")
PP_TOL, TG_TOL, RSS_TOL = 0.05, 0.05, 0.10


class BenchError(Exception):
    """An expected failure: reported as one line, without a traceback."""


def run(cmd, **kw):
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BenchError(f"cannot run {cmd[0]}: {e.strerror}")


def parse_json(text, what):
    """First JSON value that starts a line (tools may print log lines around it), or a BenchError."""
    for m in re.finditer(r"^[\[{]", text, re.M):
        try:
            return json.JSONDecoder().raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue
    raise BenchError(f"{what} printed no parsable JSON: {text.strip()[:120]!r}")


def cpu_flags():
    return X86_FLAGS if platform.machine() == "x86_64" else os.environ.get("CMAKE_ARGS", "")


def build_llama_bench(sdist_dir):
    """Return the path of a cached llama-bench, building it once per (version, flags)."""
    flags = cpu_flags()
    key = hashlib.sha256(f"{LLAMA_CPP_PYTHON} {flags}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetfit" / "llama-bench" / key
    binary = root / "build" / "bin" / "llama-bench"
    if binary.exists():
        return binary
    src = Path(sdist_dir) if sdist_dir else fetch_sdist(root)
    llama_src = src / "vendor" / "llama.cpp"
    if not (llama_src / "CMakeLists.txt").exists():
        raise BenchError(f"no llama.cpp sources under {llama_src}")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    print(f"building llama-bench ({flags}) into {root}; log: {log}", file=sys.stderr)
    with open(log, "w") as out:
        for cmd in (["cmake", "-S", llama_src, "-B", root / "build", *flags.split(), *EXTRA_FLAGS.split()],
                    ["cmake", "--build", root / "build", "--target", "llama-bench", "-j", str(os.cpu_count() or 2)]):
            try:
                rc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT).returncode
            except FileNotFoundError:
                raise BenchError("cmake not found; install cmake and a C++ compiler")
            if rc != 0:
                raise BenchError(f"llama-bench build failed (exit {rc}); see {log}")
    if not binary.exists():
        raise BenchError(f"build finished but {binary} is missing; see {log}")
    if not sdist_dir:
        shutil.rmtree(root / "src", ignore_errors=True)  # 200+ MB of sources, not needed once built
    return binary


def fetch_sdist(root):
    """Download and unpack the llama-cpp-python sdist into the cache (kept for rebuilds)."""
    dest = root / "src"
    unpacked = dest / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if unpacked.exists():
        return unpacked
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} sdist", file=sys.stderr)
        r = run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp])
        archives = list(Path(tmp).glob("*.tar.gz"))
        if r.returncode != 0 or not archives:
            raise BenchError(f"pip download of llama-cpp-python=={LLAMA_CPP_PYTHON} failed: "
                             + (r.stderr.strip().splitlines() or ["no archive"])[-1])
        with tarfile.open(archives[0]) as tar:
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not unpacked.exists():
        raise BenchError(f"sdist did not unpack to {unpacked}")
    return unpacked


def physical_cores():
    """Count (package, core) pairs: llama.cpp gains nothing from SMT siblings."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        pairs = set(re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def agent_cmd():
    local = Path(sys.executable).parent / "fleetfit-agent"
    found = str(local) if local.exists() else shutil.which("fleetfit-agent")
    if not found:
        raise BenchError("fleetfit-agent not found next to this Python nor on PATH")
    return [found]


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
                raise BenchError(f"fleetfit-agent models list failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            return {m["quant"].upper(): Path(m["path"]) for m in parse_json(r.stdout, "models list") if m["name"] == args.model}
        have = listed()
        if any(q not in have for q in missing):  # produce them with the agent, as a user would
            for sub in (["models", "pull", args.model], ["models", "quantize", args.model, "--to", ",".join(missing)]):
                r = run(agent_cmd() + sub)
                if r.returncode != 0:
                    raise BenchError(f"fleetfit-agent {' '.join(sub)} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
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
        raise BenchError(f"llama-bench failed on {gguf} (exit {r.returncode}): {(r.stderr.strip().splitlines() or ['?'])[-1]}")
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
                         f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    d = parse_json(r.stdout, "fleetfit-agent profile")
    if not isinstance(d, dict) or "decode_tokens_per_s" not in d:
        raise BenchError("fleetfit-agent profile printed no decode_tokens_per_s")
    samples = lambda k: [float(x) for x in d[k].get("samples") or [d[k]["mean"]]]
    return {"pp": samples("prefill_tokens_per_s"), "tg": samples("decode_tokens_per_s"),
            "peak_rss_bytes": int(d.get("peak_rss_bytes", 0))}


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
    p.add_argument("--rounds", type=int, default=2, help="interleaved llama-bench/fleetfit rounds (default 2)")
    p.add_argument("--threads", type=int, default=physical_cores(), help="default: physical cores")
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=128)
    p.add_argument("--repetitions", type=int, default=5, help="repetitions per tool invocation")
    p.add_argument("--model", default="smollm2-135m", help="fleetfit model name to pull/quantize")
    p.add_argument("--models-dir", help="look for *-<QUANT>.gguf here instead of asking fleetfit-agent")
    p.add_argument("--gguf", action="append", metavar="QUANT=PATH", help="explicit GGUF for a quant (repeatable)")
    p.add_argument("--sdist", help="already unpacked llama-cpp-python sdist to build from (skips the download)")
    p.add_argument("--skip-memory", action="store_true", help="skip the /usr/bin/time RSS comparison")
    p.add_argument("--json-out", help="write raw figures here as JSON")
    args = p.parse_args()

    binary = build_llama_bench(args.sdist)
    ggufs = find_ggufs(args)
    samples = {q: {"llama-bench": {"pp": [], "tg": []}, "fleetfit": {"pp": [], "tg": []}, "rss": []} for q in args.quants}
    for rnd in range(args.rounds):
        for q in args.quants:
            # Swap who goes first each round, so neither tool always runs on a warmer page cache/CPU.
            order = ["llama-bench", "fleetfit"] if rnd % 2 == 0 else ["fleetfit", "llama-bench"]
            for tool in order:
                print(f"round {rnd + 1}/{args.rounds} {q} {tool}", file=sys.stderr)
                res = llama_bench(binary, ggufs[q], args) if tool == "llama-bench" else fleetfit(ggufs[q], args)
                for test in ("pp", "tg"):
                    samples[q][tool][test] += res[test]
                if tool == "fleetfit":
                    samples[q]["rss"].append(res["peak_rss_bytes"])

    rows, report = [], {"threads": args.threads, "rounds": args.rounds, "llama_bench": str(binary), "results": []}
    print(f"\nthreads={args.threads} rounds={args.rounds} repetitions={args.repetitions} llama-bench={binary}\n")
    print("| quant | test | llama-bench t/s | fleetfit t/s | ratio fleetfit/llama-bench | within 5%? |")
    print("|---|---|---|---|---|---|")
    for q in args.quants:
        for test, name in (("pp", f"pp{args.n_prompt}"), ("tg", f"tg{args.n_gen}")):
            lb, ff = stats(samples[q]["llama-bench"][test]), stats(samples[q]["fleetfit"][test])
            ratio = ff["mean"] / lb["mean"]
            ok = abs(ratio - 1) <= (PP_TOL if test == "pp" else TG_TOL)
            print(f"| {q} | {name} | {lb['mean']:.1f} ± {lb['stdev']:.1f} | {ff['mean']:.1f} ± {ff['stdev']:.1f} "
                  f"| {ratio:.3f} | {'yes' if ok else 'NO'} |")
            report["results"].append({"quant": q, "test": name, "gguf": str(ggufs[q]), "llama_bench": lb,
                                      "fleetfit": ff, "ratio": ratio, "within_tolerance": ok})
    if not args.skip_memory:
        report["memory"] = []
        print()
        for q in args.quants:
            lb_rss = llama_bench_rss(binary, ggufs[q], args)
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
    try:
        main()
    except BenchError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
