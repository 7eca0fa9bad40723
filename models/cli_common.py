"""What both command lines (`fleetfit`, `fleetfit-agent`) share: --version, and SIGTERM ending a command through
its cleanup."""

import importlib.metadata
import signal

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
