"""Issue 27's "done when" flow, live: a fresh coordinator and one agent on loopback, one short campaign of
smollm2-135m at Q4_0 and Q8_0, then the questions a new user asks about larger models.

    python benchmarks/fit_flow.py [--busy] [--n-prompt 128 --n-gen 32 --repetitions 3] [--keep DIR]

--busy starts a busy loop per core competing for the agent's cores while the campaign runs (a device with a noisy
neighbour); they stop when the campaign ends, before the questions.

It prints, per model and precision, `fleetfit fit MODEL --quant Q --device D`'s decode (with its band and
provenance), the same cell of `fleetfit limits speed --model MODEL`, and the measured smollm2-135m decode scaled by
bytes read per token (scaling.decode_bytes_per_token at the speed rule's depth), and checks:
- decode falls with size (tinyllama-1.1b, qwen3-4b, llama-2-7b, llama-2-13b);
- each within a factor of 2 of the scaled figure; where the device's calibration is too noisy (its answer says so)
  the band must be widened instead: the factor is then checked against 2 x (1 + band);
- `fit` equals `limits speed` for the cell;
- the questions queued no job (the jobs table holds the campaign's jobs only, none leased after it ended).
Exit status 1 when a check fails. The machine's load matters: say what else ran beside it.
"""

import argparse
import os
import pathlib
import sqlite3
import subprocess
import sys
import tempfile
import time

from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render, tables
from fleetfit.coordinator.predict import scaling
from fleetfit.models import shapes
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.models.job_bounds import spread_of
from fleetfit.models.roofline import mean_decode_context
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect, default_device_id
from fleetfit.v1.words import JOB_STATE

SMALL = "smollm2-135m"
QUANTS = ("Q4_0", "Q8_0")
ASKED = ("tinyllama-1.1b", "qwen3-4b", "llama-2-7b", "llama-2-13b")  # bytes read per token rising
FACTOR = 2.0


def _wait(condition, timeout_s: float, what: str, agent: subprocess.Popen):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited with status {agent.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1)
    return value


def _jobs(db: pathlib.Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT job_id, state FROM jobs ORDER BY job_id").fetchall()


def questions(fleet, store, device_id: str) -> list[str]:
    """fit's decode for each asked model and precision beside limits speed's cell and the scaled smollm2 figure."""
    failures = []
    measured = {}
    for r in store.results(device_id=device_id):
        if r.model_name == SMALL and not r.failure:
            measured[r.quant or r.request.quant] = r
    asked = [shapes.to_proto(CATALOGUE[m]) for m in ASKED]  # `fleetfit limits speed --model M ...`
    table = fleet.GetTable(pb.GetTableRequest(name="speed", shapes=asked), timeout=300).table
    rows = [dict(zip(table.columns, (tables.typed_cell(c) for c in row.cells))) for row in table.rows]
    print(f"\n{'model':<16}{'quant':<6}{'fit decode':>12}{'band':>7} {'provenance':<10}{'limits speed':>13}"
          f"{'smollm2 scaled':>15}{'ratio':>7}  note")
    for quant in QUANTS:
        r = measured.get(quant)
        if r is None:
            failures.append(f"{SMALL} {quant} was not measured")
            continue
        small = r.decode_tokens_per_s.mean
        positions = mean_decode_context(r.n_gen)
        small_bytes = scaling.decode_bytes_per_token(CATALOGUE[SMALL], quant, positions)
        spread = spread_of([r.decode_tokens_per_s])
        print(f"{SMALL:<16}{quant:<6}{small:12.4g}{'':>7} {'measured':<10}{'':>13}{'':>15}{'':>7}  "
              f"repetitions spread {spread or 0:.0%} (CV)")
        previous = None
        for model in ASKED:
            (a,) = fleet.Fit(pb.FitRequest(model_name=model, quant=quant, device=device_id), timeout=120).answers
            decode = a.decode_tokens_per_s if a.HasField("decode_tokens_per_s") else None
            value = decode.value if decode else None
            band = decode.error_fraction if decode and decode.HasField("error_fraction") else None
            cell = next((row.get(f"{quant} tok/s") for row in rows if row.get("device id") == device_id
                         and row.get("model") == model and row.get("backend") == "llama.cpp"), None)
            shown = cell.value if isinstance(cell, render.Figure) else cell
            scaled = small * small_bytes / scaling.decode_bytes_per_token(CATALOGUE[model], quant, positions)
            ratio = value / scaled if value and scaled else None
            noisy = decode is not None and "calibration too noisy" in decode.method
            allowed = FACTOR * (1 + (band or 0)) if noisy else FACTOR
            note = []
            if value is None:
                failures.append(f"{model} {quant}: no decode figure ({a.reason[:120]})")
                note.append("no figure")
            else:
                if shown is None or round(value, 3) != shown:
                    failures.append(f"{model} {quant}: fit {value:.3f} but limits speed {shown}")
                    note.append("fit != limits speed")
                if ratio is None or not 1 / allowed <= ratio <= allowed:
                    failures.append(f"{model} {quant}: {ratio:.2f}x the scaled figure (allowed {allowed:.2f}x)")
                    note.append(f"outside {allowed:.2f}x")
                if previous is not None and value >= previous:
                    failures.append(f"{model} {quant}: decode {value:.3f} not below the smaller model's {previous:.3f}")
                    note.append("does not fall with size")
                previous = value
            if noisy:
                note.append(f"says the calibration is too noisy: band ±{band:.0%}")
            print(f"{model:<16}{quant:<6}{(value or 0):12.4g}{f'±{band:.0%}' if band else '':>7} "
                  f"{fit_rules.provenance_word(decode) if decode else '':<10}{shown if shown is not None else 'n/a':>13}"
                  f"{scaled:15.4g}{f'{ratio:.2f}x' if ratio else 'n/a':>7}  {'; '.join(note)}", flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", action="store_true", help="busy loops on every core during the campaign")
    parser.add_argument("--n-prompt", type=int, default=128)
    parser.add_argument("--n-gen", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--keep", type=pathlib.Path, help="keep the database here (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the campaign may take")
    args = parser.parse_args()

    work = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="fleetfit-fit-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "fleet.sqlite3"
    coordinator = BackgroundCoordinator(db)
    port = coordinator.start()
    address = f"127.0.0.1:{port}"
    device_id = default_device_id()
    env = {**os.environ, "FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
           "FLEETFIT_JOIN_TOKEN": coordinator.join_token(expires_s=600, device_id=device_id)}
    agent = subprocess.Popen([sys.executable, "-m", "fleetfit.agent", "run", "--coordinator", address, "--insecure",
                              "--device-id", device_id, "--identity", str(work / "identity.json")],
                             env=env, stderr=open(work / "agent.log", "w"))
    busy: list[subprocess.Popen] = []
    failures: list[str] = []
    try:
        with connect(address, token=coordinator.operator_token) as channel:
            fleet = pb_grpc.FleetServiceStub(channel)
            _wait(lambda: fleet.ListDevices(pb.ListDevicesRequest(), timeout=15).devices, 180, "the agent", agent)
            if args.busy:
                busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
            start = time.monotonic()
            spec = pb.CampaignSpec(models=[SMALL], quants=list(QUANTS), backends=["llama.cpp"],
                                   template=pb.ProfileRequest(n_prompt=args.n_prompt, n_gen=args.n_gen,
                                                              repetitions=args.repetitions))
            reply = fleet.CreateCampaign(pb.CreateCampaignRequest(selector=f"device={device_id}", spec=spec), timeout=15)
            print(f"campaign {reply.campaign_id}: {len(reply.job_ids)} jobs on {device_id}"
                  f"{' with a busy loop per core beside it' if args.busy else ''}", flush=True)

            def finished():
                jobs = fleet.GetJobs(pb.GetJobsRequest(job_ids=list(reply.job_ids)), timeout=15).jobs
                done = [j for j in jobs if JOB_STATE.word(j.job_state) in ("done", "failed", "cancelled")]
                return jobs if len(done) == len(reply.job_ids) else None

            jobs = _wait(finished, args.timeout, "the campaign", agent)
            print(f"campaign ended in {time.monotonic() - start:.0f} s: "
                  + ", ".join(f"{j.job_id[:8]} {JOB_STATE.word(j.job_state)}{' ' + j.error if j.error else ''}"
                              for j in jobs), flush=True)
            for proc in busy:
                proc.terminate()
                proc.wait()
            busy = []
            before = _jobs(db)
            failures += questions(fleet, coordinator.store, device_id)
            time.sleep(2)  # a job a question had queued would be leased by now
            after = _jobs(db)
            if after != before:
                failures.append(f"the questions changed the jobs table: {len(before)} jobs before, {len(after)} after")
            print(f"\njobs: {len(after)} in the database (the campaign's {len(reply.job_ids)}); the questions queued "
                  f"{len(after) - len(before)}")
    finally:
        for proc in busy:
            proc.terminate()
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        coordinator.stop()
    for f in failures:
        print(f"FAILED: {f}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
