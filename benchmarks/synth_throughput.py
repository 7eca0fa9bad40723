#!/usr/bin/env python3
"""How fast the synthetic GGUF writer writes, and how much memory it takes, for a 7B at Q4_0 and at F16.

Each write runs in its own child process so that its peak RSS (VmHWM) is the writer's alone. Two rates are
printed: until write_synthetic returns (data handed to the kernel), and until an fsync has put it on disk.
Files go to a temporary folder (--dir, default the system's) and are deleted at once. Exit status is 0
whether or not the targets are met; only errors fail.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TARGET_MB_S, TARGET_RSS_MB = 500, 300
CASES = [("llama-2-7b", "Q4_0"), ("llama-2-7b", "F16")]


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(arch: str, quant: str, path: str) -> None:
    from fleetfit.models.synth import write_synthetic

    start = time.perf_counter()
    write_synthetic(arch, quant, path)
    written_s = time.perf_counter() - start
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    synced_s = time.perf_counter() - start
    print(json.dumps({"bytes": os.path.getsize(path), "written_s": written_s, "synced_s": synced_s,
                      "peak_rss_mb": peak_rss_mb()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to write the files (default: the system's temporary folder)")
    args = parser.parse_args()
    print(f"{'model':<20}{'size GB':>9}{'MB/s written':>14}{'MB/s on disk':>14}{'target':>8}"
          f"{'peak RSS MB':>13}{'target':>8}")
    with tempfile.TemporaryDirectory(prefix="fleetfit-synth-", dir=args.dir) as tmp:
        for arch, quant in CASES:
            path = os.path.join(tmp, f"{arch}-{quant}.gguf")
            proc = subprocess.run([sys.executable, __file__, "--child", arch, quant, path], capture_output=True, text=True)
            if os.path.exists(path):
                os.unlink(path)
            if proc.returncode != 0:
                print(f"error: {arch} {quant}: {proc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                return 1
            r = json.loads(proc.stdout)
            mb = r["bytes"] / 1e6
            print(f"{arch + ' ' + quant:<20}{mb / 1e3:>9.2f}{mb / r['written_s']:>14.0f}{mb / r['synced_s']:>14.0f}"
                  f"{'>= ' + str(TARGET_MB_S):>8}{r['peak_rss_mb']:>13.0f}{'<= ' + str(TARGET_RSS_MB):>8}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        sys.exit(main())
