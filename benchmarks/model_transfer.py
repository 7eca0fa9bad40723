#!/usr/bin/env python3
"""One stored model to 4 agents at once on loopback: aggregate MB/s beside `cp` of the same file on this disk, the
coordinator's peak RSS while it serves, and a download SIGKILLed halfway then resumed.

    python benchmarks/model_transfer.py [--gib 1.0] [--agents 4] [--work DIR]

The file is a synthetic GGUF of about --gib GiB (a real header the store and the agents check; random weights). The
coordinator is `fleetfit serve --insecure` in its own process (so its RSS is its own); each agent is a process that
enrolls a device, leases the job the operator queued for it (FetchModel serves a device only the files its leased
jobs name), keeps that lease with heartbeats as the daemon does, and runs agent/model_fetch.fetch (the daemon's fetch)
into a cache of its own. Nothing here is a test: the figures are printed beside their reference, not asserted.
"""
import argparse
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

BIN = pathlib.Path(sys.executable).parent
ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return


def synthetic_model(directory: pathlib.Path, gib: float) -> pathlib.Path:
    """A catalogue shape's synthetic GGUF near `gib` GiB (F16 or Q8_0 of the closest size)."""
    from fleetfit.models import synth
    from fleetfit.models.catalogue import CATALOGUE

    for made in sorted(directory.glob("bench-*.gguf")):  # made by an earlier run in this work directory
        if abs(made.stat().st_size - gib * 2**30) < 0.25 * gib * 2**30:
            return made
    best = None
    for name in CATALOGUE:
        for quant in ("F16", "Q8_0"):
            try:
                size = synth.plan_file(name, quant).file_bytes
            except Exception:  # a shape or type synthesis does not write
                continue
            if best is None or abs(size - gib * 2**30) < abs(best[2] - gib * 2**30):
                best = (name, quant, size)
    name, quant, _ = best
    path = directory / f"bench-{name}-{quant}.gguf"
    if not path.exists():
        synth.write_synthetic(name, quant, str(path))
    return path


FETCH = textwrap.dedent("""
    import pathlib, sys, threading, time
    from fleetfit.agent import identity, model_fetch
    from fleetfit.agent.isolation import Deadline
    from fleetfit.v1 import fleetfit_pb2 as pb, fleetfit_pb2_grpc as pb_grpc
    address, token, device, digest, cache = sys.argv[1:6]
    found = identity.join(address, token, device, insecure=True)
    stub = pb_grpc.AgentServiceStub(found.connect(10))
    stub.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device)), timeout=30)
    print("ready", flush=True)
    sys.stdin.readline()  # its job is queued now
    job = stub.PollJob(pb.PollJobRequest(device_id=device, wait_s=10), timeout=30).job
    def keep_lease():
        while True:
            time.sleep(job.lease_s / 3)
            stub.Heartbeat(pb.HeartbeatRequest(device_id=device, job_id=job.job_id, fence=job.fence), timeout=30)
    threading.Thread(target=keep_lease, daemon=True).start()
    start = time.monotonic()
    got = model_fetch.fetch(stub, device, pb.ModelRef(name="bench", sha256=digest), pathlib.Path(cache),
                            Deadline.after(3600))
    print(f"done {time.monotonic() - start:.3f} {got.received_bytes} {got.resumed_from}", flush=True)
""")


def queue_job(address: str, state: pathlib.Path, device: str, digest: str) -> None:
    """The operator queues a job naming the stored file on `device` (what lets it fetch the file)."""
    from fleetfit.v1 import fleetfit_pb2 as pb, fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    with connect(address, 10, token=(state / "operator.token").read_text().strip()) as channel:
        pb_grpc.FleetServiceStub(channel).SubmitProfile(pb.SubmitProfileRequest(device_ids=[device], request=(
            pb.ProfileRequest(model=pb.ModelRef(name="bench", sha256=digest), backend="llama.cpp", n_prompt=16,
                              n_gen=4, repetitions=1))), timeout=30)


def go(address: str, state: pathlib.Path, device: str, digest: str, proc: subprocess.Popen) -> None:
    queue_job(address, state, device, digest)
    proc.stdin.write("\n")
    proc.stdin.flush()


def start_fetcher(address: str, token: str, device: str, digest: str, cache: pathlib.Path) -> subprocess.Popen:
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", FETCH, address, token, device, digest, str(cache)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", f"{device} did not enroll"
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--work", type=pathlib.Path, default=None)
    args = parser.parse_args()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="fleetfit-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    model = synthetic_model(work, args.gib)
    size = model.stat().st_size

    copy = work / "cp-copy.gguf"
    start = time.monotonic()
    subprocess.run(["cp", str(model), str(copy)], check=True)
    cp_s = time.monotonic() - start
    copy.unlink()

    port, state = free_port(), work / "state"
    env = {**os.environ, "FLEETFIT_STATE_DIR": str(state), "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": f"127.0.0.1:{port}"}
    shutil.rmtree(work / "blobs", ignore_errors=True)
    serve = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(work / "fleet.sqlite3"), "--listen",
                              f"127.0.0.1:{port}", "--insecure"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(BIN / "fleetfit"), "models"], env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.5)
        rss_idle = rss_bytes(serve.pid)
        start = time.monotonic()
        added = subprocess.run([str(BIN / "fleetfit"), "models", "add", str(model), "--name", "bench"], env=env,
                               capture_output=True, text=True, check=True)
        upload_s = time.monotonic() - start
        digest = added.stdout.split("sha256:")[1].split()[0]
        rss_after_upload = rss_bytes(serve.pid)

        def token() -> str:
            out = subprocess.run([str(BIN / "fleetfit"), "token", "create", "--db", str(work / "fleet.sqlite3")],
                                 env=env, capture_output=True, text=True, check=True).stdout
            return out.strip().splitlines()[-1]

        address = f"127.0.0.1:{port}"
        fetchers = [start_fetcher(address, token(), f"bench-{i}", digest, work / f"agent-{i}")
                    for i in range(args.agents)]
        for i in range(args.agents):
            queue_job(address, state, f"bench-{i}", digest)
        sampler = RssSampler(serve.pid)
        sampler.start()
        start = time.monotonic()
        for proc in fetchers:
            proc.stdin.write("\n")
            proc.stdin.flush()
        outs = [proc.stdout.readline().split() for proc in fetchers]
        fetch_s = time.monotonic() - start
        sampler.done.set()
        sampler.join()
        for proc in fetchers:
            proc.wait()
        assert all(o and o[0] == "done" for o in outs), outs

        # the resume: one more device, killed halfway, run again
        cache = work / "agent-resume"
        proc = start_fetcher(address, token(), "bench-resume", digest, cache)
        partial = cache / "stored" / digest / ".fetch.resume"
        go(address, state, "bench-resume", digest, proc)
        while not (partial.exists() and partial.stat().st_size >= size // 2):
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        held = partial.stat().st_size
        proc = start_fetcher(address, token(), "bench-resume2", digest, cache)
        go(address, state, "bench-resume2", digest, proc)
        resumed = proc.stdout.readline().split()
        proc.wait()
        hwm = rss_bytes(serve.pid, "VmHWM")
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)

    mb = size / 1e6
    print(f"model: {model.name}, {mb:,.1f} MB; {args.agents} agents on loopback, this machine: {os.cpu_count()} CPUs\n")
    print("| what | seconds | MB/s | reference |")
    print("| --- | ---: | ---: | --- |")
    print(f"| cp of the file (same disk) | {cp_s:.2f} | {mb / cp_s:,.0f} | |")
    print(f"| upload (fleetfit models add: hash, send, verify) | {upload_s:.2f} | {mb / upload_s:,.0f} | "
          f"{mb / upload_s / (mb / cp_s):.2f}x cp |")
    print(f"| fetch to {args.agents} agents at once (aggregate) | {fetch_s:.2f} | {args.agents * mb / fetch_s:,.0f} | "
          f"{args.agents * mb / fetch_s / (mb / cp_s):.2f}x cp (target >= 0.5x) |")
    for i, out in enumerate(outs):
        print(f"| agent {i}: fetch + verify | {float(out[1]):.2f} | {mb / float(out[1]):,.0f} | |")
    print(f"| resumed fetch after SIGKILL at {held / 1e6:,.0f} MB | {float(resumed[1]):.2f} | "
          f"{int(resumed[2]) / 1e6 / float(resumed[1]):,.0f} | received {int(resumed[2]) / 1e6:,.0f} MB, "
          f"resumed from {int(resumed[3]) / 1e6:,.0f} MB |")
    print(f"\ncoordinator RSS: {sampler.peak / 1e6:,.0f} MB peak while serving {args.agents} fetches (sampled every "
          f"20 ms; target < 200 MB); {rss_idle / 1e6:,.0f} MB idle before the upload, {rss_after_upload / 1e6:,.0f} MB "
          f"after it; VmHWM over the whole run {hwm / 1e6:,.0f} MB")
    print(f"work directory: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
