"""What both command lines (`fleetfit`, `fleetfit-agent`) share: --version, SIGTERM ending a command through its
cleanup, and bad input refused as one line on stderr with exit status 2."""

import functools
import importlib.metadata
import signal
from typing import Callable, NoReturn

import typer


def version_callback(program: str):
    """A --version option's callback: print `program` and the installed version, then exit."""
    def callback(value: bool) -> None:
        if value:
            try:
                version = importlib.metadata.version("fleetfit")
            except importlib.metadata.PackageNotFoundError:
                version = "unknown (not installed)"
            typer.echo(f"{program} {version}")
            raise typer.Exit()
    return callback


def _terminated(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def end_on_sigterm() -> None:
    """SIGTERM (`kill`, a service manager, a CI timeout) ends a command as Ctrl-C does, through its cleanup: a worker
    it started is killed with it, a synthetic file being measured is deleted. Daemons set their own handler."""
    signal.signal(signal.SIGTERM, _terminated)


def fail(message: str) -> NoReturn:
    """How both command lines refuse: one line on stderr, exit status 2, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(errors: Callable[[], tuple[type, ...]], refused: Callable[[Exception], str]):
    """A decorator for a command: the errors bad input causes (`errors()`, imported only when one is raised) and a
    call the coordinator refused (grpc.RpcError, worded by `refused`) end it through fail()."""
    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            import grpc

            try:
                return command(*args, **kwargs)
            except grpc.RpcError as exc:
                fail(refused(exc))
            except Exception as exc:
                if isinstance(exc, errors()):
                    fail(str(exc))
                raise

        return wrapper

    return decorate
