"""Progress bars for long commands of both CLIs: on stderr, and only when stderr is a terminal, so machine-readable stdout (and
logs, pipes, tests) never carry them."""

import contextlib
import pathlib
import sys
import threading
from typing import Callable, Iterator, Optional


@contextlib.contextmanager
def bar(description: str, total: Optional[float] = None, unit: str = "steps") -> Iterator[Callable[..., None]]:
    """Yields update(advance=0, completed=None, description=None): a bar with its count (bytes, or steps) and, with a total, an ETA."""
    if not sys.stderr.isatty():
        yield lambda advance=0, completed=None, description=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as shown:
        task = shown.add_task(description, total=total)

        def update(advance: float = 0, completed: Optional[float] = None, description: Optional[str] = None) -> None:
            shown.update(task, advance=advance, completed=completed, description=description)

        yield update


@contextlib.contextmanager
def polled(description: str, read: Callable[[], float], total: Optional[float] = None,
           unit: str = "steps") -> Iterator[None]:
    """A bar for work another process does: `read()` (what it has done so far) polled twice a second."""
    with bar(description, total, unit) as update:
        if not sys.stderr.isatty():
            yield
            return
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.5):
                update(completed=read())

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()


def file_bytes(description: str, target: pathlib.Path, total: Optional[float] = None):
    """A bytes bar for a file another process writes: the size of target's partial files (.NAME.*.part beside it,
    as the cache's writers name them)."""
    def written() -> float:
        size = 0
        for part in target.parent.glob(f".{target.name}.*.part"):
            with contextlib.suppress(OSError):  # renamed into place, or removed, since the glob
                size += part.stat().st_size
        return size

    return polled(description, written, total, unit="bytes")
