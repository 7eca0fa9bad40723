"""fleetfit models: the coordinator's model store from the operator's command line (add, list, rm).

An upload reads the file's GGUF header here first (the bounded reader), asks the coordinator for room, hashes the
file, then sends it in pieces of at most 4 MiB over the operator's authenticated channel. Run again after a cut
(this command or the coordinator killed), it resumes from the bytes the store holds.
"""

import getpass
import hashlib
import pathlib
import socket
import time
from typing import Annotated, Optional

import typer

from fleetfit.coordinator.cli import DEFAULT_ADDRESS, TABLE_FORMATS, Ca, Coordinator, OldFormat, Output, StateDir, \
    Token, _fail, _fleet, _pages, user_errors
from fleetfit.models import cli_common

app = typer.Typer(help="The coordinator's model store: GGUF files that campaigns name (profile --models NAME).",
                  invoke_without_command=True, context_settings=cli_common.CONTEXT_SETTINGS, rich_markup_mode=None,
                  pretty_exceptions_enable=False)
PIECE_BYTES = 4 << 20
RETRY_S = 60.0  # how long an upload waits for a coordinator that stopped answering before giving up (resumable)


@app.callback()
def _models(ctx: typer.Context, coordinator: Coordinator = DEFAULT_ADDRESS, output: Output = "table",
            state_dir: StateDir = None, ca: Ca = None, token: Token = None, old_format: OldFormat = None) -> None:
    """List the stored models (also: fleetfit models list)."""
    if ctx.invoked_subcommand is None:
        models_list(coordinator, output, state_dir, ca, token, old_format)


@app.command("list")
@user_errors
def models_list(coordinator: Coordinator = DEFAULT_ADDRESS, output: Output = "table", state_dir: StateDir = None,
                ca: Ca = None, token: Token = None, old_format: OldFormat = None) -> None:
    """Name, sha256, size, architecture, type and who added each stored model."""
    from fleetfit.coordinator.answers import render
    from fleetfit.v1 import fleetfit_pb2 as pb

    fmt = cli_common.output_format(output, TABLE_FORMATS, old_format)
    found = _pages(_fleet(coordinator, state_dir, ca, token).ListModels, pb.ListModelsRequest(), "models")
    header = ["name", "sha256", "size bytes", "architecture", "quant", "params", "added by", "added"]
    body = [[m.name, m.sha256, m.size_bytes, m.architecture, m.quant,
             m.n_params if m.HasField("n_params") else None, m.added_by,
             time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.added_unix_s)) + "Z"] for m in found]
    if fmt in ("table", "md"):
        for row in body:
            row[1], row[2] = f"sha256:{row[1][:12]}", f"{row[2] / 1e6:,.1f} MB"
        header[2] = "size"
    typer.echo(render.render(header, body, fmt, "models"))


@app.command("add")
@user_errors
def models_add(
    file: Annotated[str, typer.Argument(help="A GGUF file, or hf:ORG/REPO/FILE.gguf[@REVISION] (the coordinator "
                                             "downloads it from Hugging Face or its HF_ENDPOINT mirror).")],
    name: Annotated[Optional[str], typer.Option(help="The name campaigns use (default: the file's stem).")] = None,
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Upload a GGUF file to the coordinator's store (resumable: run it again after a cut)."""
    from fleetfit.coordinator.service.hf_import import is_hf_ref
    from fleetfit.coordinator.service.model_store import StoreRefused, checked_name
    from fleetfit.models.gguf_file import inspect_gguf, open_regular

    fleet = _fleet(coordinator, state_dir, ca, token)
    if is_hf_ref(file):
        model = imported(fleet, file, name or "")
    else:
        path = pathlib.Path(file)
        try:
            name = checked_name(name or path.stem)
        except StoreRefused as exc:
            _fail(str(exc))
        info = inspect_gguf(path)  # ModelError (one line) for a missing, special, non-GGUF or damaged file
        model = upload(fleet, path, name, info.file_bytes, open_regular)
    typer.echo(cli_common.clean(f"stored {model.name}: sha256:{model.sha256} {model.size_bytes / 1e6:,.1f} MB "
                                f"({model.architecture} {model.quant})"))  # the file's own words


def upload(fleet, file: pathlib.Path, name: str, size: int, open_regular, say=None):
    """Send `file` to the store as `name` and answer the StoredModel; resumes from what the store holds."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    say = say or (lambda text: typer.echo(text, err=True))
    added_by = f"{getpass.getuser()}@{socket.gethostname()}"
    _call(fleet.PutModel, pb.PutModelRequest(name=name, size_bytes=size))  # room for it, before reading it all
    digest = hashlib.sha256()
    f, _ = open_regular(file)
    with f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        base = pb.PutModelRequest(name=name, sha256=digest.hexdigest(), size_bytes=size, added_by=added_by)
        reply = _call(fleet.PutModel, base)
        if reply.received_bytes and not reply.HasField("model"):
            say(f"resuming the upload of {name} at {reply.received_bytes / 1e6:,.1f} of {size / 1e6:,.1f} MB")
        finish_s = 120 + size / 50e6  # the last piece waits for the coordinator to hash the whole file
        while not reply.HasField("model"):
            f.seek(reply.received_bytes)
            piece = f.read(PIECE_BYTES)
            if not piece:
                _fail(f"{file} is shorter than when it was hashed ({reply.received_bytes} bytes): it changed; add it "
                      "again")
            request = pb.PutModelRequest()
            request.CopyFrom(base)
            request.offset, request.data = reply.received_bytes, piece
            last = reply.received_bytes + len(piece) >= size
            reply = _call(fleet.PutModel, request, finish_s if last else 60)
    return reply.model


IMPORT_TIMEOUT_S = 24 * 3600  # a large file from the hub


def imported(fleet, ref: str, name: str = ""):
    """The StoredModel of a Hugging Face file (hf:...), downloaded by the coordinator into its store (a file
    already there is named again, not downloaded)."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    request = pb.ImportModelRequest(ref=ref, name=name, added_by=f"{getpass.getuser()}@{socket.gethostname()}")
    return fleet.ImportModel(request, timeout=IMPORT_TIMEOUT_S).model


def _call(call, request, timeout_s: float = 60):
    """`call(request)`, tried again for RETRY_S while the coordinator does not answer (restarted, overloaded): an
    upload survives a coordinator's restart; the resumed piece is the one the store asks for."""
    import grpc

    from fleetfit.v1 import fleetfit_pb2 as pb

    end = time.monotonic() + RETRY_S
    while True:
        try:
            return call(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or \
                    time.monotonic() > end:
                raise
        time.sleep(1.0)
        if request.data:  # ask where the store is now: the cut piece may or may not have landed
            where = pb.PutModelRequest()
            where.CopyFrom(request)
            where.data, where.offset = b"", 0
            request = where


@app.command("rm")
@user_errors
def models_rm(name: Annotated[str, typer.Argument(help="The stored model's name (fleetfit models lists them).")],
              coordinator: Coordinator = DEFAULT_ADDRESS, state_dir: StateDir = None, ca: Ca = None,
              token: Token = None) -> None:
    """Forget a stored model's name (its file goes once no other name refers to it)."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    reply = _fleet(coordinator, state_dir, ca, token).RemoveModel(pb.RemoveModelRequest(name=name), timeout=30)
    typer.echo(f"removed {name}" + ("" if reply.file_removed else " (its file stays: another name refers to it)"))
