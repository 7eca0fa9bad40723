"""fleetfit: the coordinator's command line. Commands parse options and call library code."""

import functools
import os
import pathlib
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Coordinate a fleet of fleetfit agents: store results, build limit tables, answer fit queries.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

DEFAULT_ADDRESS = "127.0.0.1:50051"
Coordinator = Annotated[str, typer.Option(envvar="FLEETFIT_COORDINATOR", help="HOST:PORT of the coordinator.")]
Format = Annotated[str, typer.Option("--format", help="table, md, csv or json.")]


def default_db_path() -> pathlib.Path:
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return pathlib.Path(xdg) / "fleetfit" / "fleetfit.sqlite3"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command):
    """Turn the errors that bad input or an absent coordinator cause into one line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import grpc

        from fleetfit.coordinator.quickstart import QuickstartError
        from fleetfit.coordinator.server import ListenError
        from fleetfit.v1.transport import CoordinatorUnreachable

        try:
            return command(*args, **kwargs)
        except (CoordinatorUnreachable, QuickstartError, ListenError) as exc:
            _fail(str(exc))
        except grpc.RpcError as exc:
            _fail(f"{exc.code().name}: {exc.details()}")

    return wrapper


def _fleet(address: str):
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    return pb_grpc.FleetServiceStub(connect(address, timeout_s=5.0))


def _check_format(fmt: str) -> None:
    from fleetfit.coordinator.render import FORMATS

    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


@app.command()
@user_errors
def serve(
    db: Annotated[Optional[pathlib.Path], typer.Option(envvar="FLEETFIT_DB", help="SQLite file.")] = None,
    listen: Annotated[str, typer.Option(envvar="FLEETFIT_LISTEN")] = DEFAULT_ADDRESS,
) -> None:
    """Run the coordinator (gRPC, with the standard health service) until SIGTERM or Ctrl-C."""
    import asyncio
    import logging
    import signal

    from fleetfit.coordinator.server import start_server, stop_server
    from fleetfit.coordinator.store import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleetfit %(message)s")

    async def main() -> None:
        store = Store(db or default_db_path())
        server, health_servicer, port = await start_server(store, listen)
        typer.echo(f"fleetfit coordinator listening on {listen.rsplit(':', 1)[0]}:{port}, database {store.path}")
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        await stopping.wait()
        await stop_server(server, health_servicer)
        store.close()
        typer.echo("fleetfit coordinator stopped")

    asyncio.run(main())


@app.command()
@user_errors
def devices(coordinator: Coordinator = DEFAULT_ADDRESS, fmt: Format = "table") -> None:
    """The devices that have registered."""
    from fleetfit.coordinator import render
    from fleetfit.v1 import fleetfit_pb2 as pb

    _check_format(fmt)
    found = _fleet(coordinator).ListDevices(pb.ListDevicesRequest(), timeout=15).devices
    header = ["device", "host", "arch", "cpu", "cores", "RAM GiB", "GPUs", "results"]
    body = [[d.inventory.device_id, d.inventory.hostname, d.inventory.arch, d.inventory.cpu_model,
             str(d.inventory.cpu_cores_physical), f"{d.inventory.ram_total_bytes / 2**30:.1f}",
             ", ".join(g.name for g in d.inventory.gpus) or "none", str(d.results)] for d in found]
    typer.echo(render.render(header, body, fmt, list(found)))


@app.command()
@user_errors
def limits(
    name: Annotated[str, typer.Argument(help="Which table; `fleetfit limits list` names them.")] = "measured",
    coordinator: Coordinator = DEFAULT_ADDRESS,
    fmt: Format = "table",
    option: Annotated[Optional[list[str]], typer.Option(help="Table option KEY=VALUE (repeatable).")] = None,
) -> None:
    """Tables from the fleet's measurements (default: device × model × quant × backend → memory and speed)."""
    from fleetfit.coordinator.tables import render_table
    from fleetfit.v1 import fleetfit_pb2 as pb

    _check_format(fmt)
    fleet = _fleet(coordinator)
    if name == "list":
        for t in fleet.ListTables(pb.ListTablesRequest(), timeout=15).tables:
            typer.echo(f"{t.name:<14} {t.title}")
        return
    options = dict(o.split("=", 1) for o in option or [] if "=" in o)
    if len(options) != len(option or []):
        _fail("--option takes KEY=VALUE")
    typer.echo(render_table(fleet.GetTable(pb.TableRequest(name=name, options=options), timeout=30), fmt))


@app.command()
@user_errors
def fit(
    model: Annotated[str, typer.Argument(help="Model name, e.g. smollm2-135m.")],
    quant: Annotated[str, typer.Option(help="Quant type, e.g. Q4_0.")],
    min_tps: Annotated[Optional[float], typer.Option(help="Minimum decode tokens/s.")] = None,
    backend: str = "llama.cpp",
    coordinator: Coordinator = DEFAULT_ADDRESS,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """For every known device: fits / does not fit / unknown, with the measured evidence."""
    from fleetfit.coordinator import render
    from fleetfit.v1 import fleetfit_pb2 as pb

    if min_tps is not None and min_tps <= 0:
        _fail(f"--min-tps must be positive, got {min_tps:g}")
    request = pb.FitRequest(model_name=model, quant=quant, backend=backend)
    if min_tps is not None:
        request.min_decode_tokens_per_s = min_tps
    answers = list(_fleet(coordinator).Fit(request, timeout=15).answers)
    typer.echo(render.render(*render.fit_table(answers), "json" if as_json else "table", answers))


@app.command()
@user_errors
def quickstart(
    db: Annotated[Optional[pathlib.Path], typer.Option(envvar="FLEETFIT_DB", help="SQLite file.")] = None,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 5,
) -> None:
    """Coordinator + local agent on this machine: profile SmolLM2-135M at Q4_1/F16/Q8_0/Q4_0, print the tables."""
    from fleetfit.coordinator import quickstart as qs

    for name, value in (("n-prompt", n_prompt), ("n-gen", n_gen), ("repetitions", repetitions)):
        if value < 1:
            _fail(f"--{name} must be at least 1, got {value}")
    qs.run(db or default_db_path(), typer.echo, n_prompt, n_gen, repetitions)


if __name__ == "__main__":
    app()
