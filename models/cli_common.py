"""What both command lines (`fleetfit`, `fleetfit-agent`) share: --version, SIGTERM ending a command through its
cleanup, and bad input refused as one line on stderr with exit status 2."""

import functools
import importlib.metadata
import re
import signal
import unicodedata
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


# What must never reach a terminal raw from device-provided text: C0 controls (ESC, CR, LF, ...), DEL, C1
# controls; and beyond ASCII every character a person cannot see or that moves what is shown: line and paragraph
# separators (U+2028 splits a row), format characters (zero-width spaces, U+FEFF, bidi overrides and isolates),
# surrogates, private-use and unassigned code points.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UNSEEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # Unicode general categories
# Unicode's default-ignorable code points outside those categories: drawn as nothing (Hangul fillers, the combining
# grapheme joiner, variation selectors), so a name with one looks exactly like the name without it.
IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0"
                       "\U000e0100-\U000e01ef]")


def unseen(char: str) -> bool:
    """Whether a person cannot see `char` where it is printed, or it moves what is shown (one rule for the
    terminal's escapes, both command lines', and for names that look alike, coordinator/answers/devices.py)."""
    return unicodedata.category(char) in UNSEEN or IGNORABLE.match(char) is not None


def _escape(char: str) -> str:
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


def clean(text: str) -> str:
    """`text` safe to print: each control or unseen character shown as its escape (\\x1b, \\u202e, \\u2028),
    never sent raw."""
    text = str(text)
    if text.isascii():  # the common case, in C
        return CONTROL.sub(lambda m: _escape(m.group()), text)
    return "".join(_escape(c) if unseen(c) else c for c in text)


def fail(message: str) -> NoReturn:
    """How both command lines refuse: one line on stderr, exit status 2, no traceback. The message may quote a
    device's, a file's or the coordinator's text: escaped (`clean`), so it stays one line and sends no control."""
    typer.echo(f"error: {clean(message)}", err=True)
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


# -- one grammar for both command lines

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}  # -h everywhere (subcommands inherit it)


def typer_app(help: str, **kwargs) -> typer.Typer:
    """A command group of either CLI: -h and --help, plain help text (rich's panels print a flag as `--wide <bool>`,
    which reads as if it took a value), one-line errors instead of rich tracebacks."""
    return typer.Typer(help=help, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                       context_settings=CONTEXT_SETTINGS, **kwargs)
PEOPLE_FORMATS = ("table", "md")
MACHINE_FORMATS = ("csv", "json", "jsonl", "sql")


def output_help(formats: tuple[str, ...]) -> str:
    people = [f for f in formats if f in PEOPLE_FORMATS]
    tools = [f for f in formats if f not in PEOPLE_FORMATS]
    return (f"Output format: {' or '.join(people)} for people" if people else "Output format") + \
        (f"; {', '.join(tools)} for tools (every field, typed)." if tools else ".")


def output_format(output: str, formats: tuple[str, ...], old: str | None = None, as_json: bool = False) -> str:
    """The format a command prints: -o/--output, or its old spellings (--format X, --json; hidden aliases); a name
    outside `formats` is a one-line error (exit 2)."""
    chosen = "json" if as_json else (old or output)
    if chosen not in formats:
        typer.echo(f"error: unknown output format {chosen!r} (choose from {', '.join(formats)})", err=True)
        raise typer.Exit(2)
    return chosen
