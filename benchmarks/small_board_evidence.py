"""Issue 28's "Done when", on this host as a user types it: a TLS coordinator (`fleetfit serve`), an agent in a real
cgroup v1 group of 1 GiB / 1 CPU (cpuset 0 and a 100 % CPU quota; root and v1 controllers needed), then

  1. `fleetfit-agent info` inside it: its memory and CPU lines, with their source;
  2. `fleetfit-agent run` inside it, several times as fresh devices: seconds from the spawn to the device's first
     appearance in ListDevices (what `fleetfit devices` reads), polled every 20 ms; the first start enrolls with
     its token too, --joined measures later starts (enrolled beforehand by `fleetfit-agent join`);
  3. `fleetfit fit llama-2-7b --quant Q4_0 --device <that device>` before any run there, and `fleetfit devices`.

    sudo .venv/bin/python benchmarks/small_board_evidence.py [--runs 3]

The cgroups are removed afterwards. Timings depend on the machine's load: print `uptime` beside them.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.cgroups import v1_cgroup  # noqa: E402  (the helper the tests make their groups with)

BIN = pathlib.Path(sys.executable).parent
GIB = 1 << 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--joined", action="store_true",
                        help="enroll each device first (`fleetfit-agent join`), so that `run` is a later start, not "
                             "the first (which enrolls too)")
    args = parser.parse_args()
    from fleetfit.v1 import fleetfit_pb2 as pb
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    work = pathlib.Path(tempfile.mkdtemp(prefix="fleetfit-evidence-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "FLEETFIT_COORDINATOR": address, "FLEETFIT_STATE_DIR": str(work)}
    serve = subprocess.Popen([BIN / "fleetfit", "serve", "--listen", address, "--db", work / "fleet.sqlite3"],
                             env=env, stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
    agents = []
    try:
        for _ in range(300):
            if (work / "tls/ca.pem").exists() and (work / "operator.token").exists():
                break
            time.sleep(0.1)

        def token() -> str:  # one-time: one per device that joins
            return subprocess.run([BIN / "fleetfit", "token", "create", "--db", work / "fleet.sqlite3"],
                                  env=env, capture_output=True, text=True, check=True).stdout.strip()

        stub = pb_grpc.FleetServiceStub(connect(address, 5, ca_pem=(work / "tls/ca.pem").read_bytes(),
                                                token=(work / "operator.token").read_text().strip()))
        print(f"$ uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        with v1_cgroup(GIB, "0", 100000) as inside:
            info = subprocess.run([*inside, BIN / "fleetfit-agent", "info", "--device-id", "board-1g",
                                   "--cache-dir", work / "cache"], env=env, capture_output=True, text=True)
            print("$ fleetfit-agent info   (inside memory.limit_in_bytes=1 GiB, cpuset.cpus=0, cfs_quota 100000/100000)")
            print("\n".join(line for line in info.stdout.splitlines() if line.startswith(("cpu ", "memory "))))
            if info.returncode:
                print(info.stderr)
            seconds = []
            for run in range(1, args.runs + 1):
                device, joining = f"board-{'joined' if args.joined else '1g'}-{run}", token()
                if args.joined:
                    subprocess.run([*inside, BIN / "fleetfit-agent", "join", "--coordinator", address, "--token",
                                    joining, "--device-id", device, "--identity", work / f"{device}.json"],
                                   env=env, capture_output=True, check=True)
                began = time.monotonic()
                agent = subprocess.Popen([*inside, BIN / "fleetfit-agent", "run", "--coordinator", address,
                                          "--token", joining, "--device-id", device,
                                          "--identity", work / f"{device}.json", "--cache-dir", work / "cache"],
                                         env=env, stdout=open(work / f"{device}.log", "w"), stderr=subprocess.STDOUT)
                agents.append(agent)
                while not any(d.inventory.device_id == device
                              for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices):
                    if agent.poll() is not None or time.monotonic() - began > 120:
                        sys.exit(f"{device} never appeared: see {work / (device + '.log')}")
                    time.sleep(0.02)
                seconds.append(time.monotonic() - began)
                print(f"run {run}: {device} listed {seconds[-1]:.2f} s after `fleetfit-agent run` was spawned")
                if run < args.runs:  # one agent at a time in the group, as one board runs one
                    agent.terminate()
                    agent.wait(30)
            devices = subprocess.run([BIN / "fleetfit", "devices"], env=env, capture_output=True, text=True)
            print("$ fleetfit devices\n" + devices.stdout.rstrip())
            device = f"board-{'joined' if args.joined else '1g'}-{args.runs}"
            fit = subprocess.run([BIN / "fleetfit", "fit", "llama-2-7b", "--quant", "Q4_0", "--device", device],
                                 env=env, capture_output=True, text=True)
            print(f"$ fleetfit fit llama-2-7b --quant Q4_0 --device {device}\n" + fit.stdout.rstrip() + fit.stderr)
            answer = subprocess.run([BIN / "fleetfit", "fit", "llama-2-7b", "--quant", "Q4_0", "--device", device,
                                     "--json"], env=env, capture_output=True, text=True)
            for row in json.loads(answer.stdout or "[]"):
                print(f"verdict {row.get('verdict')}: {row.get('reason')}")
            print(f"listed after (s): {', '.join(f'{s:.2f}' for s in seconds)}")
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(30)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
        serve.terminate()
        serve.wait(30)
        print(f"logs: {work}")


if __name__ == "__main__":
    import pytest

    try:
        main()
    except pytest.skip.Exception as exc:  # tests/cgroups.py's way of saying no cgroups can be made here
        sys.exit(f"small_board_evidence: {exc.msg}")
