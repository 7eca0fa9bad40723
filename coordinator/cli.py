"""fleetfit: the coordinator's command line. Commands parse options and call library code."""

import contextlib
import os
import sys
import pathlib
import time
from typing import Annotated, Optional

import typer

from fleetfit.models import cli_common
from fleetfit.models.backends import BACKENDS, precisions_help

# gRPC's core logs each failed TLS handshake (BAD_SIGNATURE, ...) to stderr at INFO; the commands say what to fix
# in one line instead. Set before grpc is first imported; $GRPC_VERBOSITY still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

app = cli_common.typer_app(
    "Coordinate a fleet of fleetfit agents: store results, build limit tables, answer fit queries.")

DEFAULT_ADDRESS = "127.0.0.1:50051"


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=cli_common.version_callback("fleetfit"),
                                                is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Top-level options."""
    cli_common.end_on_sigterm()


Coordinator = Annotated[str, typer.Option(envvar="FLEETFIT_COORDINATOR", help="HOST:PORT of the coordinator.")]
TABLE_FORMATS = (*cli_common.PEOPLE_FORMATS, *cli_common.MACHINE_FORMATS)
Output = Annotated[str, typer.Option("-o", "--output", help=cli_common.output_help(TABLE_FORMATS))]
OldFormat = Annotated[Optional[str], typer.Option("--format", hidden=True, help="The old spelling of -o.")]
Wide = Annotated[bool, typer.Option("--wide", help="table and md: every column (ids, evidence, reasons), cells in "
                                                   "full, nothing left out to fit the terminal.")]
Options = Annotated[Optional[list[str]], typer.Option(
    "--option", help="Table option KEY=VALUE (repeatable); an unknown key is an error that names the known ones.")]


def default_db_path() -> pathlib.Path:
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return pathlib.Path(xdg) / "fleetfit" / "fleetfit.sqlite3"


def default_state_dir(db: Optional[str] = None) -> pathlib.Path:
    """Where `serve` keeps its CA (tls/) and the operator token: $FLEETFIT_STATE_DIR, else the directory of the
    SQLite file (`db`, default default_db_path()); for PostgreSQL, the default SQLite file's directory."""
    from fleetfit.coordinator.service.db import is_postgres_url

    if os.environ.get("FLEETFIT_STATE_DIR"):
        return pathlib.Path(os.environ["FLEETFIT_STATE_DIR"])
    return (pathlib.Path(db) if db and not is_postgres_url(db) else default_db_path()).parent


DATABASE_RECORD = "database"  # in the state directory: the database `serve` last ran on (token create finds it)


def recorded_db(state: pathlib.Path) -> Optional[str]:
    try:
        return (state / DATABASE_RECORD).read_text().strip() or None
    except OSError:
        return None


def record_db(state: pathlib.Path, url: str) -> None:
    """Where `serve` runs, for the commands that open its database directly (owner-only: a URL may hold a password)."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / DATABASE_RECORD
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")


def coordinator_db(db: Optional[str], state_dir: Optional[pathlib.Path]) -> str:
    """The database a command that opens it directly uses: --db, else the one `serve` recorded in the state
    directory, else serve's default; never a new one (a token in a database no coordinator serves is refused)."""
    from fleetfit.coordinator.service.db import is_postgres_url

    if db:
        url = db
    elif (found := recorded_db(state_dir or default_state_dir())) is not None:
        url = found
    elif state_dir is not None:
        _fail(f"{state_dir} records no database (`fleetfit serve --state-dir {state_dir}` records it when it starts): "
              "pass --db, the database the coordinator serves")
    else:
        url = str(default_db_path())
    if not is_postgres_url(url) and not pathlib.Path(url).exists():
        _fail(f"no coordinator database at {url}: start `fleetfit serve` first, or pass --db (the database the "
              "coordinator serves)")
    return url


StateDir = Annotated[Optional[pathlib.Path], typer.Option(
    envvar="FLEETFIT_STATE_DIR", help="CA (tls/) and operator token (default: the directory of the SQLite file).")]
Ca = Annotated[Optional[pathlib.Path], typer.Option(
    "--ca", envvar="FLEETFIT_CA", help="The fleet's CA certificate (default: STATE_DIR/tls/ca.pem).")]
Token = Annotated[Optional[str], typer.Option(
    "--token", envvar="FLEETFIT_TOKEN", help="Operator token (default: STATE_DIR/operator.token).", show_default=False)]
Db = Annotated[Optional[str], typer.Option(envvar="FLEETFIT_DB", help="SQLite file, or postgresql://... URL.")]


def _input_errors() -> tuple[type, ...]:
    """The errors that bad input or an absent coordinator cause: one line and exit status 2."""
    from fleetfit.coordinator.service.db import DatabaseError
    from fleetfit.coordinator.quickstart import QuickstartError
    from fleetfit.coordinator.service.server import ListenError
    from fleetfit.models.errors import ModelError
    from fleetfit.v1.transport import CoordinatorUnreachable

    return CoordinatorUnreachable, QuickstartError, ListenError, DatabaseError, ModelError


_fail = cli_common.fail
user_errors = cli_common.user_errors(_input_errors, lambda exc: rpc_error_text(exc))


def rpc_error_text(exc) -> str:
    """A refused or failed call as one line that says what to fix."""
    import grpc

    code, details = exc.code(), (exc.details() or "").splitlines()[0] if exc.details() else ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (f"the coordinator refused the operator token ({details}): pass that coordinator's token with "
                "--token (or $FLEETFIT_TOKEN), or its state directory with --state-dir")
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the coordinator stopped answering ({details}): is `fleetfit serve` still running?"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the coordinator did not answer in time: it may be overloaded; try again"
    return f"{code.name}: {details}"


def _fleet(address: str, state_dir: Optional[pathlib.Path] = None, ca: Optional[pathlib.Path] = None,
           token: Optional[str] = None):
    """A FleetService stub with the operator's credentials: --token ($FLEETFIT_TOKEN) or STATE_DIR/operator.token,
    TLS against --ca ($FLEETFIT_CA) or STATE_DIR/tls/ca.pem; plaintext only with FLEETFIT_INSECURE=1."""
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    state = state_dir or default_state_dir()
    token_file = state / "operator.token"
    if not token and token_file.exists():
        try:
            token = token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read the operator token {token_file}: {getattr(exc, 'strerror', None) or exc}")
    ca_pem = None
    if os.environ.get("FLEETFIT_INSECURE", "").lower() not in ("1", "true", "yes"):
        ca_path = ca or state / "tls" / "ca.pem"
        try:
            ca_pem = ca_path.read_bytes()
        except OSError as exc:
            _fail(f"cannot read the CA certificate {ca_path} ({exc.strerror}): pass --ca (or $FLEETFIT_CA), or "
                  "--state-dir of the coordinator's state (FLEETFIT_INSECURE=1 for a plaintext coordinator)")
        if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
            _fail(f"{ca_path} is not a PEM certificate: pass the coordinator's tls/ca.pem with --ca")
    return pb_grpc.FleetServiceStub(connect(address, timeout_s=5.0, ca_pem=ca_pem, token=token))


# A table's first answer at 100,000 results reads and decodes them all and calibrates every device: tens of seconds
# on a loaded coordinator, for one table as for `limits all` (later answers are kept: benchmarks/table_scale.py).
TABLE_TIMEOUT_S = 120


def _pages(call, request, field: str, timeout: float = 30):
    """Every item of a paged list RPC (`field` of its replies), following next_page_token to the last page."""
    items = []
    while True:
        reply = call(request, timeout=timeout)
        items += getattr(reply, field)
        if not reply.next_page_token:
            return items
        request.page_token = reply.next_page_token


def _parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            _fail(f"bad label {item!r} (expected key=value)")
        labels[key.strip()] = value.strip()
    return labels


def _parse_duration_s(text: str) -> float:
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not m:
        _fail(f"bad duration {text!r} (e.g. 30m, 24h, 7d)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _table_options(option: Optional[list[str]]) -> dict[str, str]:
    options = dict(o.split("=", 1) for o in option or [] if "=" in o)
    if len(options) != len(option or []):
        _fail("--option takes KEY=VALUE")
    return options


@app.command()
@user_errors
def serve(
    db: Db = None,
    listen: Annotated[str, typer.Option(envvar="FLEETFIT_LISTEN", help="HOST:PORT to listen on (port 0: a free "
                                                                      "one, printed).")] = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    san: Annotated[Optional[list[str]], typer.Option(
        "--san", help="Another name or address clients dial (repeatable): added to the server certificate beside "
                      "the --listen host (all this machine's names and addresses for 0.0.0.0).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plaintext, no TLS: loopback development only.")] = False,
    mtls: Annotated[bool, typer.Option("--mtls", help="Require client certificates (fleetfit-agent join --mtls).")] = False,
    lease: Annotated[float, typer.Option(help="Job lease in seconds (agents renew it with heartbeats).")] = 60.0,
    results_per_hour: Annotated[int, typer.Option(help="Quota: results each device may report per hour.")] = 10_000,
    models_per_day: Annotated[int, typer.Option(help="Quota: distinct model names each device may report per day.")] = 200,
    mib_per_hour: Annotated[int, typer.Option(help="Quota: MiB of results each device may report per hour.")] = 64,
    new_database: Annotated[bool, typer.Option(
        "--new-database", help="Start an empty database beside a state directory that already has an operator token "
                               "or CA (a new, empty fleet: enrolled agents must join again).")] = False,
    blob_dir: Annotated[Optional[pathlib.Path], typer.Option(
        envvar="FLEETFIT_BLOB_DIR", help="The model store's directory (fleetfit models add): default blobs/ beside the "
                                         "SQLite file (for PostgreSQL, in the state directory); replicas share one.")
                        ] = None,
    advertise: Annotated[Optional[str], typer.Option(
        "--advertise", help="HOST:PORT agents reach this replica at, told to every agent (replicas on one PostgreSQL "
                            "database: agents move to another when theirs stops answering). Default: --listen, "
                            "unless it is a wildcard address.")] = None,
    install_listen: Annotated[Optional[str], typer.Option(
        "--install-listen", help="HOST:PORT to serve the one-line join on (HTTPS, the same CA): join.sh and the "
                                 "package index of `fleetfit wheelhouse add`.")] = None,
) -> None:
    """Run the coordinator (gRPC over TLS, with the standard health service) until SIGTERM or Ctrl-C.

    On first start it creates a CA and server certificate, and an operator token, in the state directory (default:
    beside the SQLite file). A SQLite database is checked (quick_check) and locked against a second coordinator.
    """
    import asyncio
    import logging
    import signal

    from fleetfit.coordinator.service import pki
    from fleetfit.coordinator.service.db import is_postgres_url, lock_sqlite_file
    from fleetfit.coordinator.service.enrollment import fleet_state_without_database, operator_token
    from fleetfit.coordinator.service.ingest import Quotas
    from fleetfit.coordinator.service.model_store import ModelStore, default_blob_dir
    from fleetfit.coordinator.service.server import start_server, stop_server
    from fleetfit.coordinator.service.store import Store

    if insecure and mtls:
        _fail("--mtls needs TLS: drop --insecure")
    if insecure and install_listen:
        _fail("--install-listen needs TLS (join.sh pins the fleet's CA): drop --insecure")
    for name, value in (("--advertise", advertise), ("--install-listen", install_listen)):
        host, sep, port_text = (value or "h:1").rpartition(":")
        if not (sep and host and port_text.isdigit() and int(port_text) < 65536):
            _fail(f"{name} {value[:80]!r} is not HOST:PORT")
    if lease <= 0:
        _fail(f"--lease must be positive, got {lease:g}")
    if results_per_hour < 1 or models_per_day < 1 or mib_per_hour < 1:
        _fail("--results-per-hour, --models-per-day and --mib-per-hour must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleetfit %(message)s")
    url = str(db or default_db_path())
    state = state_dir or default_state_dir(url)
    lock = None if is_postgres_url(url) else lock_sqlite_file(pathlib.Path(url))  # held until this process ends

    async def main() -> None:
        store = Store(url, Quotas(results_per_hour, models_per_day, mib_per_hour << 20))
        if not new_database and (why := fleet_state_without_database(store, state)):
            store.close()
            _fail(f"{store.db.display} {why}: restore the database from a backup, or pass --new-database to start "
                  "an empty fleet")
        operator_token(store, state)
        record_db(state, url)
        names = pki.names_for(listen.rsplit(":", 1)[0], list(san or []))
        authority = None if insecure else pki.load_or_create(state / "tls", names)
        try:
            models = ModelStore(blob_dir or default_blob_dir(url, state))
        except OSError as exc:
            _fail(f"cannot use the model store's directory {exc.filename}: {exc.strerror}")
        advertised = advertise or _default_advertised(listen)
        stopping = asyncio.Event()  # before the health service says SERVING: a SIGTERM from then on stops gracefully
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        server, health_servicer, port = await start_server(store, listen, authority, mtls, lease, models, advertised)
        how = "plaintext (--insecure)" if authority is None else f"TLS, CA sha256 {authority.fingerprint[:16]}..."
        typer.echo(f"fleetfit coordinator listening on {listen.rsplit(':', 1)[0]}:{port}, database {store.db.display}, "
                   f"{how}")
        if authority is not None:
            typer.echo(f"server certificate names: {', '.join(sorted(pki.certificate_names(authority.server_cert_pem)))}")
        if advertised and advertised.endswith(":0"):  # start_server advertised the port bound
            advertised = f"{advertised[:-2]}:{port}"
        install = None
        if install_listen:
            from fleetfit.coordinator.service import install_server, wheelhouse

            def coordinators(host: str) -> list[str]:  # the device reached us as `host`: that first, then the others
                first = f"{host.rpartition(':')[0] or host}:{port}"
                return [first, *[a for a in store.replicas() if a != first]]

            try:
                install = install_server.start(install_listen, wheelhouse.Wheelhouse(state / "wheelhouse"), store,
                                               state / "tls", authority.server_chain_pem, coordinators)
            except OSError as exc:
                _fail(f"cannot serve the install on {install_listen}: {exc.strerror or exc}")
            served = install_server.remember_url(state, install_listen, install.server_port, advertised)
            typer.echo(f"one-line join served on {served}/join.sh (fleetfit token create prints the line)")
        typer.echo(f"operator token and CA in {state}; model store in {models.root}; enroll devices with: "
                   "fleetfit token create")
        typer.echo(f"advertised to agents as {advertised}" if advertised else
                   "not advertised to agents (a wildcard --listen: give --advertise HOST:PORT for replicas)")
        await stopping.wait()
        if install is not None:
            install.shutdown()
        await stop_server(server, health_servicer)
        store.close()
        typer.echo("fleetfit coordinator stopped")

    try:
        asyncio.run(main())
    finally:
        if lock is not None:
            lock.close()


def _default_advertised(listen: str) -> str | None:
    """What a replica tells agents it is reached at, when --advertise is not given: --listen, unless that is a
    wildcard host (0.0.0.0, ::), which no agent can dial."""
    host, _, port = listen.rpartition(":")
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        return None
    return listen


token_app = cli_common.typer_app("Join tokens that enroll devices.")
app.add_typer(token_app, name="token")


@token_app.command("create")
@user_errors
def token_create(
    expires: Annotated[str, typer.Option(help="Lifetime: 30m, 24h, 7d.")] = "24h",
    labels: Annotated[str, typer.Option(help="Labels for the device that joins: k=v,k=v.")] = "",
    device: Annotated[Optional[str], typer.Option(
        help="Only this device id may join with it; for an enrolled device this re-enrolls it (a board "
             "reinstalled, a key lost): its old credential is revoked when the token is spent.")] = None,
    db: Db = None,
    state_dir: StateDir = None,
    install_url: Annotated[Optional[str], typer.Option(
        "--install-url", help="https://HOST:PORT devices reach the one-line join at (default: what `serve "
                              "--install-listen` last served).")] = None,
) -> None:
    """A one-time join token: fleetfit-agent join --coordinator ADDR --token TOKEN; with a coordinator that serves
    the install (serve --install-listen), the one line that installs and joins a device with it."""
    from fleetfit.coordinator.service import pki
    from fleetfit.coordinator.service.enrollment import join_token_text
    from fleetfit.coordinator.service.store import Store

    lifetime_s, parsed = _parse_duration_s(expires), _parse_labels(labels)
    url = coordinator_db(db, state_dir)
    state = state_dir or default_state_dir(url)
    authority = pki.load_or_create(state / "tls") if (state / "tls" / "ca.pem").exists() else None
    from fleetfit.coordinator.service.install_server import join_line, served_url

    join_url = install_url or served_url(state)
    if join_url and authority is None:
        _fail("the one-line join needs TLS (its token pins the fleet's CA): this coordinator's state has no CA")
    store = Store(url)
    try:
        token = join_token_text(store, authority, parsed, lifetime_s, device)
    finally:
        store.close()
    typer.echo(join_line(join_url, token) if join_url else token)


wheelhouse_app = typer.Typer(help="What devices install from the coordinator alone (serve --install-listen).",
                             context_settings=cli_common.CONTEXT_SETTINGS, rich_markup_mode=None,
                             pretty_exceptions_enable=False)
app.add_typer(wheelhouse_app, name="wheelhouse")


@wheelhouse_app.callback(invoke_without_command=True)
@user_errors
def wheelhouse_list(ctx: typer.Context, db: Db = None, state_dir: StateDir = None,
                    output: Annotated[str, typer.Option("-o", "--output", help=cli_common.output_help(
                        ("table", "json")))] = "table",
                    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="The old spelling of -o json.")
                                       ] = False) -> None:
    """What the fleet holds: the packages devices install, and the checked llama.cpp wheel per class of device."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    as_json = cli_common.output_format(output, ("table", "json"), as_json=as_json) == "json"

    from fleetfit.coordinator.service.wheelhouse import Wheelhouse

    held = Wheelhouse((state_dir or default_state_dir(db)) / "wheelhouse").listing()
    if as_json:
        typer.echo(json.dumps(held))
        return
    files = sum(len(f) for f in held["packages"].values())
    typer.echo(f"packages: {len(held['packages'])} projects, {files} files" if files else
               "packages: none (fleetfit wheelhouse add --python 3.11 --platform manylinux2014_aarch64)")
    for project, names in held["packages"].items():
        typer.echo(f"  {project}: {', '.join(names)}")
    typer.echo(f"llama.cpp wheels: {len(held['llama'])}" + ("" if held["llama"] else
                                                           " (the first device of each class builds and uploads one)"))
    for item in held["llama"]:
        build = item.get("build", {})
        typer.echo(f"  {item['class']}: {item['wheel']} (sha256 {item['sha256'][:12]}..., build "
                   f"{build.get('build', '?')}, checked, from {build.get('uploaded_by', '?')})")


@wheelhouse_app.command("add")
@user_errors
def wheelhouse_add(
    python: Annotated[str, typer.Option("--python", help="The devices' Python, MAJOR.MINOR.")] = "3.11",
    platform: Annotated[Optional[list[str]], typer.Option(
        "--platform", help="pip's platform tag of the devices (repeatable): manylinux2014_aarch64, "
                           "manylinux_2_28_x86_64, ...")] = None,
    wheel: Annotated[Optional[pathlib.Path], typer.Option(
        "--fleetfit-wheel", help="The fleetfit wheel to serve (default: built from this installation's source).")] = None,
    extras: Annotated[str, typer.Option(help="fleetfit extras the devices get, e.g. nvml.")] = "",
    db: Db = None,
    state_dir: StateDir = None,
) -> None:
    """Fill the wheelhouse for a class of device with `pip download` (run where pip reaches an index): the fleetfit
    wheel and its dependencies, llama-cpp-python's, and its source with its build tools."""
    from fleetfit.coordinator.service import wheelhouse

    if not platform:
        _fail("give the devices' platform tag: --platform manylinux2014_aarch64 (repeatable)")
    house = wheelhouse.Wheelhouse((state_dir or default_state_dir(db)) / "wheelhouse")
    try:
        added = wheelhouse.add(house, python, list(platform), wheel, extras)
    except wheelhouse.WheelhouseError as exc:
        _fail(str(exc))
    typer.echo(f"added {len(added)} files to {house.packages} for Python {python} on {', '.join(platform)}")


device_app = cli_common.typer_app("One enrolled device.")
app.add_typer(device_app, name="device")


@device_app.command("revoke")
@user_errors
def device_revoke(device_id: Annotated[str, typer.Argument(help="The device's id (`fleetfit devices --wide`).")],
                  coordinator: Coordinator = DEFAULT_ADDRESS, state_dir: StateDir = None, ca: Ca = None,
                  token: Token = None) -> None:
    """Revoke a device's credential: its agent's calls are refused from now on (other replicas: within 5 s)."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    _fleet(coordinator, state_dir, ca, token).RevokeDevice(pb.RevokeDeviceRequest(device_id=device_id), timeout=15)
    typer.echo(f"revoked {device_id}; to enroll it again: fleetfit token create --device {device_id}")


def _bar(status, width: int = 30) -> str:
    total = status.done + status.running + status.failed + status.queued + status.cancelled
    if not total:
        return "[" + " " * width + "] no jobs"
    cells = [("#", status.done), ("x", status.failed), ("-", status.cancelled), (">", status.running)]
    bar = "".join(ch * round(width * n / total) for ch, n in cells)[:width]
    ended = status.done + status.failed + status.cancelled
    return (f"[{bar:.<{width}}] {ended}/{total}  done {status.done}  running {status.running}"
            f"  failed {status.failed}  queued {status.queued}" +
            (f"  cancelled {status.cancelled}" if status.cancelled else ""))


def _model_refs(refs: list[str]) -> tuple[list[str], list]:
    """Model names for the coordinator, and the shapes of those read here from files (GGUF header or config.json;
    the coordinator never reads paths): a file shaped like a catalogue entry is that entry's name."""
    from fleetfit.models import shapes
    from fleetfit.models.catalogue import CATALOGUE, n_params

    names, found = [], []
    for ref in refs:
        if not shapes.is_file_ref(ref):
            names.append(ref)
            continue
        arch = shapes.architecture_of(ref)
        known = arch.name in CATALOGUE
        typer.echo(f"{ref}: {arch.family}, {n_params(arch) / 1e9:.2f}B parameters"
                   f"{f', the catalogued {arch.name}' if known else f' (as {arch.name})'}", err=True)
        names.append(arch.name)
        if not known:
            found.append(shapes.to_proto(arch))
    return names, found


@app.command()
@user_errors
def profile(
    select: Annotated[str, typer.Option(help="Devices: e.g. 'arch=aarch64,ram>=8GB,label=lab' (empty: all).")] = "",
    models: Annotated[str, typer.Option(help="Models, comma-separated: catalogue names; stored models (fleetfit models "
                                             "add) by name or sha256:DIGEST, or hf:ORG/REPO/FILE.gguf[@REV] (stored "
                                             "first); or GGUF files / Hugging Face config.json read here (their shape "
                                             "is sent; devices synthesize it).")
                      ] = "smollm2-135m",
    quants: Annotated[str, typer.Option(help="Quant types, comma-separated.")] = "Q4_0",
    backends: Annotated[str, typer.Option(help="Backends, comma-separated.")] = "llama.cpp",
    n_prompt: Annotated[int, typer.Option(help="Prompt tokens for the prefill test.")] = 512,
    n_gen: Annotated[int, typer.Option(help="Tokens for the decode test.")] = 128,
    repetitions: Annotated[int, typer.Option(help="Runs of each test (mean ± stdev).")] = 5,
    parallel: Annotated[str, typer.Option(
        help="A concurrency sweep after each single-stream run: stream counts decoded together, e.g. 1,2,4,8 "
             "(the serving table's measured points).")] = "",
    max_attempts: Annotated[int, typer.Option(help="Leases a job may take before it is failed.")] = 3,
    quality: Annotated[bool, typer.Option(
        "--quality", help="After each run, the KL divergence of its file from the model's highest precision (a stored "
                          "F16/BF16/F32 file itself, else F16 derived from it) on each device that can hold it: the "
                          "quality table's rows. Stored and real models only.")] = False,
    quality_context: Annotated[int, typer.Option(help="--quality: tokens per chunk (half of each scored).")] = 512,
    quality_chunks: Annotated[int, typer.Option(help="--quality: the text's first N chunks only; 0 = all.")] = 0,
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Start a campaign: every matching device profiles each model x quant x backend it can run."""
    from fleetfit.models import job_bounds
    from fleetfit.v1 import fleetfit_pb2 as pb

    def split(text: str) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()]

    try:
        job_bounds.check_max_attempts(max_attempts, "--max-attempts", default=False)
        stream_counts = job_bounds.parse_stream_counts(parallel)
        job_bounds.check_quality(quality_context, quality_chunks, ("--quality-context", "--quality-chunks"))
    except ValueError as exc:
        _fail(str(exc))
    fleet = _fleet(coordinator, state_dir, ca, token)
    refs = split(models)
    if any(ref.startswith("hf:") for ref in refs):  # into the coordinator's store first: devices fetch it from there
        from fleetfit.coordinator.models_cli import imported

        refs = [imported(fleet, ref).name if ref.startswith("hf:") else ref for ref in refs]
    names, shapes = _model_refs(refs)
    spec = pb.CampaignSpec(models=names, quants=split(quants), backends=split(backends), shapes=shapes,
                           template=pb.ProfileRequest(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                                                      parallel=stream_counts))
    if quality:
        spec.template.quality.CopyFrom(pb.QualityPass(context_tokens=quality_context, chunks=quality_chunks))
    _create_campaign(fleet, select, spec, max_attempts)


def _create_campaign(fleet, selector: str, spec, max_attempts: int = 0) -> None:
    """Start a campaign (the one way work is queued from the command line) and say what it queued."""
    from fleetfit.coordinator.answers.render import clean
    from fleetfit.v1 import fleetfit_pb2 as pb

    reply = fleet.CreateCampaign(pb.CreateCampaignRequest(selector=selector, spec=spec, max_attempts=max_attempts),
                                 timeout=15)
    typer.echo(f"campaign {reply.campaign_id}: {len(reply.job_ids)} jobs on {len(reply.device_ids)} device(s)")
    for line in reply.skipped:
        typer.echo(f"  skipped {clean(line)}")
    typer.echo(f"follow it with: fleetfit campaign status {reply.campaign_id} --watch "
               f"(stop it with: fleetfit campaign cancel {reply.campaign_id})")


def _calibrate(fleet, device: Optional[str], model: str, quant: str, shape=None) -> None:
    """A calibration campaign: one run of `model` at `quant` (llama.cpp, a synthetic file of its shape, the
    calibration run shape) on `device` (id, display name or hostname), or on every device."""
    from fleetfit.coordinator.answers import devices as lookup
    from fleetfit.models import job_bounds
    from fleetfit.v1 import fleetfit_pb2 as pb

    selector = ""
    if device:
        try:
            found = lookup.find(_pages(fleet.ListDevices, pb.ListDevicesRequest(), "devices"), device)
        except lookup.DeviceLookupError as exc:
            _fail(str(exc))
        selector = f"device={found.inventory.device_id}"
    n_prompt, n_gen, repetitions = job_bounds.CALIBRATION_RUN
    spec = pb.CampaignSpec(models=[model], quants=[quant], backends=["llama.cpp"], shapes=[shape] if shape else [],
                           template=pb.ProfileRequest(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions))
    _create_campaign(fleet, selector, spec)


@app.command()
@user_errors
def calibrate(
    device: Annotated[str, typer.Argument(help="The device: its id, display name, or a hostname one device has.")],
    model: Annotated[str, typer.Argument(help="A catalogue name, or a GGUF file / config.json read here.")],
    quant: Annotated[str, typer.Option(help="Quant type.")] = "Q4_0",
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Measure MODEL on DEVICE (a synthetic file of its shape, the calibration run shape) so that `fit` answers for
    it rest on a run of it there: an ordinary campaign (`campaigns`, `campaign status`, `campaign cancel`)."""
    (name,), shapes = _model_refs([model])
    _calibrate(_fleet(coordinator, state_dir, ca, token), device, name, quant, shapes[0] if shapes else None)


@app.command("campaigns")
@user_errors
def campaigns_list(coordinator: Coordinator = DEFAULT_ADDRESS, state_dir: StateDir = None, ca: Ca = None,
                   token: Token = None) -> None:
    """Every campaign with its progress."""
    from fleetfit.coordinator.answers.render import clean
    from fleetfit.v1 import fleetfit_pb2 as pb

    found = _pages(_fleet(coordinator, state_dir, ca, token).ListCampaigns, pb.ListCampaignsRequest(), "campaigns")
    if not found:
        typer.echo("no campaigns (start one with: fleetfit profile --select ...)")
    for c in found:
        typer.echo(f"{clean(c.campaign_id)}  {clean(c.selector) or '(all devices)':<28} {_bar(c)}")


campaign_app = cli_common.typer_app("One campaign.")
app.add_typer(campaign_app, name="campaign")


@campaign_app.command("status")
@user_errors
def campaign_status(
    campaign_id: Annotated[str, typer.Argument(help="The id `fleetfit profile` printed (`fleetfit campaigns` lists "
                                                    "them).")],
    watch: Annotated[bool, typer.Option("--watch", help="Wait until no job is queued or running, or nothing can "
                                                        "progress (every device with jobs left is lost: exit 1); a "
                                                        "progress bar on a terminal; then print the status.")] = False,
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Progress of one campaign: done / running / failed / queued per device, lost devices, skipped combinations
    with their reasons, failure reasons, and an ETA from the jobs ended so far."""
    import time

    from fleetfit.coordinator.answers.render import clean
    from fleetfit.v1 import fleetfit_pb2 as pb
    from fleetfit.v1.words import DEVICE_STATUS

    fleet = _fleet(coordinator, state_dir, ca, token)

    def lost() -> dict[str, float]:
        """Lost devices: id -> seconds silent."""
        return {d.inventory.device_id: time.time() - d.last_seen_unix_s
                for d in _pages(fleet.ListDevices, pb.ListDevicesRequest(), "devices")
                if DEVICE_STATUS.word(d.device_status) == "lost"}

    c, gone = _campaign(fleet, campaign_id), lost()
    if watch:  # a bar with an ETA on stderr (a terminal only) until nothing is left to run, or nothing can run
        from fleetfit.models.progress import bar

        with bar(f"campaign {clean(c.campaign_id)}", total=_total(c)) as update:
            while (c.running or c.queued) and not _stuck(c, gone):
                update(completed=_ended(c), description=f"campaign {clean(c.campaign_id)} {_eta(c)}")
                time.sleep(2)
                c, gone = _campaign(fleet, campaign_id), lost()
    lines = [f"campaign {c.campaign_id}  {c.selector or '(all devices)'}  "
             f"{', '.join(c.spec.models)} x {', '.join(c.spec.quants)} x {', '.join(c.spec.backends)}",
             f"  {'all':<24} {_bar(c)}"]
    if c.running or c.queued:
        lines.append(f"  {'':<24} {_eta(c)}")
    for d in c.devices:
        name = d.device_name or d.device_id
        state = f"  LOST (silent {gone[d.device_id]:.0f} s)" if d.device_id in gone else ""
        lines.append(f"  {name:<24} {_bar(d)}{state}")
        lines += [f"    failed: {e}" for e in d.errors]
        lines += [f"    skipped: {e}" for e in d.skipped]
    stuck = _stuck(c, gone)
    if stuck:
        lines.append(f"nothing can progress: {stuck}")
    typer.echo("\n".join(clean(line) for line in lines))  # device ids, names and errors come from devices
    if watch and stuck:
        raise typer.Exit(1)


def _total(c) -> int:
    return c.done + c.running + c.failed + c.queued + c.cancelled


def _ended(c) -> int:
    return c.done + c.failed + c.cancelled


def _stuck(c, lost: dict[str, float]) -> str:
    """Why no job of the campaign can run now ("" when one can): every device with jobs left is lost."""
    waiting = [d for d in c.devices if d.queued or d.running]
    if not waiting or not all(d.device_id in lost for d in waiting):
        return ""
    return (f"{sum(d.queued + d.running for d in waiting)} job(s) wait on lost device(s) "
            f"{', '.join(d.device_name or d.device_id for d in waiting)}; start their agents again (`fleetfit-agent "
            f"run`), or `fleetfit campaign cancel {c.campaign_id}`")


def _eta(c) -> str:
    """Time left at the pace measured so far: the jobs ended since the campaign started, per second."""
    import time

    ended, left = _ended(c), c.queued + c.running
    elapsed = time.time() - c.created_unix_s
    if not left:
        return "eta: done"
    if not ended or elapsed <= 0:
        return "eta: unknown until a job ends"
    seconds = left * elapsed / ended
    return f"eta ~{seconds / 60:.0f} min ({ended} job(s) ended in {elapsed / 60:.1f} min)" if seconds >= 90 else \
        f"eta ~{seconds:.0f} s ({ended} job(s) ended in {elapsed:.0f} s)"


@campaign_app.command("cancel")
@user_errors
def campaign_cancel(
    campaign_id: Annotated[str, typer.Argument(help="The campaign's id (`fleetfit campaigns` lists them).")],
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Cancel a campaign: its queued jobs are dropped; a running job is stopped on its device (within a heartbeat)
    and reported cancelled, the files it made removed. Results already measured stay. Cancelling again is harmless."""
    from fleetfit.coordinator.answers.render import clean
    from fleetfit.v1 import fleetfit_pb2 as pb

    reply = _fleet(coordinator, state_dir, ca, token).CancelCampaign(
        pb.CancelCampaignRequest(campaign_id=campaign_id), timeout=15)
    typer.echo(clean(f"campaign {reply.campaign.campaign_id}: {reply.dropped} queued job(s) cancelled, "
                     f"{reply.stopping} running job(s) being stopped on their devices"))
    typer.echo(clean(f"  {'all':<24} {_bar(reply.campaign)}"))


def _campaign(fleet, campaign_id: str):
    """The campaign with every device, following GetCampaign's pages of devices."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    request = pb.GetCampaignRequest(campaign_id=campaign_id)
    reply = fleet.GetCampaign(request, timeout=30)
    campaign = reply.campaign
    while reply.next_page_token:
        request.page_token = reply.next_page_token
        reply = fleet.GetCampaign(request, timeout=30)
        campaign.devices.extend(reply.campaign.devices)
    return campaign


@app.command()
@user_errors
def devices(coordinator: Coordinator = DEFAULT_ADDRESS, output: Output = "table", wide: Wide = False,
            state_dir: StateDir = None, ca: Ca = None, token: Token = None, old_format: OldFormat = None) -> None:
    """The devices that have registered."""
    from fleetfit.coordinator.answers import render
    from fleetfit.v1 import fleetfit_pb2 as pb
    from fleetfit.v1.words import DEVICE_STATUS

    fmt = cli_common.output_format(output, TABLE_FORMATS, old_format)
    found = _pages(_fleet(coordinator, state_dir, ca, token).ListDevices, pb.ListDevicesRequest(), "devices")
    people = fmt in ("table", "md")
    header = ["device id", "name", "host", "labels", "arch", "cpu", "cores", "RAM GiB", "GPUs", "backends", "results",
              "refused", "last refusal", "status", "silent s"]
    body = [[d.inventory.device_id, d.display_name, d.inventory.hostname, ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())),
             d.inventory.arch, d.inventory.cpu_model, d.inventory.cpus_usable or d.inventory.cpu_cores_physical,
             round(d.inventory.ram_total_bytes / 2**30, 1), ", ".join(g.name for g in d.inventory.gpus) or None,
             " ".join(b.name for b in d.inventory.backends if b.available) or None, d.results, d.refused,
             d.last_refusal or None, DEVICE_STATUS.word(d.device_status), round(time.time() - d.last_seen_unix_s)]
            for d in found]
    if people:  # one status column: "lost (silent 42 s)"
        header = header[:-1]
        body = [[*row[:-2], f"{row[-2]} (silent {row[-1]} s)" if row[-2] == "lost" else row[-2]] for row in body]
    typer.echo(render.render(header, body, fmt, table="devices", wide=wide))


@app.command()
@user_errors
def limits(
    name: Annotated[str, typer.Argument(help="Which table; `fleetfit limits list` names them; `all`: the whole set as one document.")] = "measured",
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
    output: Output = "table",
    wide: Wide = False,
    option: Options = None,
    old_format: OldFormat = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="Also predict rows for this model in the size tables (memory, speed): a catalogue name, or a "
                        "GGUF file / config.json read here (repeatable).")] = None,
) -> None:
    """Tables from the fleet's measurements (default: device × model × quant × backend → memory and speed)."""
    from fleetfit.coordinator.answers.tables import render_table
    from fleetfit.models import shapes
    from fleetfit.models.catalogue import CATALOGUE
    from fleetfit.v1 import fleetfit_pb2 as pb

    fmt = cli_common.output_format(output, TABLE_FORMATS, old_format)
    names, asked = _model_refs(model or [])
    for ref in dict.fromkeys(names):
        if ref in CATALOGUE:
            asked.append(shapes.to_proto(CATALOGUE[ref]))
        elif ref not in {a.name for a in asked}:
            _fail(f"unknown model {ref!r}: name a catalogue model, or a GGUF file or config.json")
    fleet = _fleet(coordinator, state_dir, ca, token)
    if name == "list":
        for t in fleet.ListTables(pb.ListTablesRequest(), timeout=15).tables:
            typer.echo(f"{t.name:<14} {t.title}")
        return
    options = _table_options(option)
    if name == "all":  # the seed's tables in its order, as one document
        from fleetfit.coordinator.answers.tables import SEED_ORDER

        if fmt not in ("md", "table"):
            _fail("`limits all` writes md or table; use one table's name for csv, json, jsonl or sql")
        parts = fleet.GetTable(pb.GetTableRequest(names=SEED_ORDER, options=options, shapes=asked),
                               timeout=TABLE_TIMEOUT_S).tables
        typer.echo("# fleetfit: scalability analysis and deployment limits\n\n" +
                   "\n\n".join(f"## {t.title}\n\n{render_table(t, fmt, wide)}" for t in parts))
        return
    typer.echo(render_table(fleet.GetTable(pb.GetTableRequest(name=name, options=options, shapes=asked),
                                           timeout=TABLE_TIMEOUT_S).table, fmt, wide))


@app.command()
@user_errors
def fit(
    model: Annotated[Optional[str], typer.Argument(
        help="Model name (e.g. llama-2-7b), or a GGUF file or Hugging Face config.json read here (omit with --device).")] = None,
    quant: Annotated[Optional[str], typer.Option(help="Quant type, e.g. Q4_0 (a GGUF file: its own, by default).")] = None,
    context: Annotated[Optional[int], typer.Option(
        help="Context tokens (default: 4096, or the model's trained context when smaller).")] = None,
    min_tps: Annotated[Optional[float], typer.Option(
        help="Minimum decode tokens/s (per stream with --streams; the serving answer's default: 8).")] = None,
    streams: Annotated[Optional[int], typer.Option(
        "--streams", "--users", help="Concurrent streams (users): does the device serve that many, each at "
                                     "--min-tps, and with what memory?")] = None,
    max_watts: Annotated[Optional[float], typer.Option(help="Maximum decode power, W.")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="Only this device (its id, or a hostname that one device has); without MODEL: its largest model per "
             "precision.")] = None,
    backend: Annotated[str, typer.Option(help=f"One of {', '.join(BACKENDS)} ({precisions_help()}).")] = "llama.cpp",
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
    output: Annotated[str, typer.Option("-o", "--output", help=cli_common.output_help(TABLE_FORMATS)[:-1] +
                                        "; answers: the full answers as JSON (the wire message's fields, nested: "
                                        "evidence, figures with provenance).")] = "table",
    wide: Wide = False,
    old_format: OldFormat = None,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="The old spelling of -o answers.")] = False,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="After answering, start a calibration campaign of MODEL on --device (or every device), "
                            "as `fleetfit calibrate` does; a question alone never queues work.")] = False,
) -> None:
    """Per device: fits comfortably (<70% of RAM) / tight (70-95%) / does not fit, with speed, energy, the streams
    it serves at the interactive speed (or --min-tps), and provenance; --streams N: does it serve N at once.

    `~` marks a predicted or estimated figure and `±` its leave-one-size-out error band."""
    from fleetfit.coordinator.answers import render
    from fleetfit.coordinator.answers.fit import CONTEXT_RULE, MAX_STREAMS, fit_table
    from fleetfit.models import shapes
    from fleetfit.models.catalogue import CATALOGUE, active_params, n_params
    from fleetfit.v1 import fleetfit_pb2 as pb

    for name, value in (("--min-tps", min_tps), ("--max-watts", max_watts), ("--context", context),
                        ("--streams", streams)):
        if value is not None and value <= 0:
            _fail(f"{name} must be positive, got {value:g}")
    if streams is not None and streams > MAX_STREAMS:
        _fail(f"--streams must be at most {MAX_STREAMS}, got {streams}")
    if model is None and device is None:
        _fail("give a MODEL (with --quant), or --device D for the largest model per precision on D")
    shape = None
    if model is not None and shapes.is_file_ref(model):  # read here: the coordinator gets the shape, not the path
        arch, file_quant = shapes.architecture_of(model), shapes.file_quant(model)
        quant = quant or file_quant
        known = "" if arch.name not in CATALOGUE else f", the catalogued {arch.name}"
        typer.echo(f"{model}: {arch.family}, {n_params(arch) / 1e9:.2f}B parameters"
                   f"{f' ({active_params(arch) / 1e9:.2f}B active)' if arch.is_moe else ''}{known}", err=True)
        model, shape = arch.name, (None if known else shapes.to_proto(arch))
    if model is not None and quant is None:
        _fail("--quant is required with a MODEL (e.g. --quant Q4_0)")
    request = pb.FitRequest(model_name=model or "", quant=quant or "", backend=backend, device=device or "")
    if shape is not None:
        request.shape.CopyFrom(shape)
    for field, value in (("min_decode_tokens_per_s", min_tps), ("max_watts", max_watts), ("context_tokens", context),
                         ("streams", streams)):
        if value is not None:
            setattr(request, field, value)
    fmt = cli_common.output_format(output, (*TABLE_FORMATS, "answers"), old_format)
    fmt = "answers" if as_json else fmt
    if calibrate and model is None:
        _fail("--calibrate needs a MODEL (with --quant)")
    fleet = _fleet(coordinator, state_dir, ca, token)
    answers = _pages(fleet.Fit, request, "answers", timeout=60)
    if fmt == "answers":
        from fleetfit.v1.records import to_json

        typer.echo(to_json(answers))
    else:
        typer.echo(render.render(*fit_table(answers), fmt, table="fit", wide=wide))
        if fmt in ("table", "md") and answers:
            typer.echo("\n" + render.notes_text([CONTEXT_RULE], fmt))
    if calibrate:  # the explicit request, after the answer; its lines on stderr keep a --json or csv answer clean
        with contextlib.redirect_stdout(sys.stderr):
            _calibrate(fleet, device, model, answers[0].quant if answers else quant, shape)


@app.command()
@user_errors
def report(
    out: Annotated[pathlib.Path, typer.Option(help="Directory for index.html and tables.md.")],
    coordinator: Coordinator = DEFAULT_ADDRESS,
    state_dir: StateDir = None,
    ca: Ca = None,
    token: Token = None,
    option: Options = None,
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="A fit section for these models (fit's answers, as `fleetfit fit` gives them): catalogue "
                         "names, NAME:QUANT for one precision (else each precision the fleet measured); "
                         "comma-separated or repeated.")] = None,
) -> None:
    """A static HTML report: a summary per device first (largest model that fits, decode at the reference size,
    streams, J/token), fit's answers for --models, plots (inline SVG) of decode speed, memory, tokens per joule and,
    per swept device, decode against concurrent streams, per device with quality results decode against mean KLD,
    and every table."""
    from fleetfit.coordinator.answers import report as html_report
    from fleetfit.coordinator.answers.tables import REPORT_ORDER
    from fleetfit.v1 import fleetfit_pb2 as pb

    options = _table_options(option)
    try:
        named = html_report.named_models(models or [])
    except ValueError as exc:
        _fail(str(exc))
    fleet = _fleet(coordinator, state_dir, ca, token)
    devices = _pages(fleet.ListDevices, pb.ListDevicesRequest(), "devices")
    rows = _pages(fleet.GetLimitTable, pb.GetLimitTableRequest(), "rows")
    found = list(fleet.GetTable(pb.GetTableRequest(names=REPORT_ORDER, options=options), timeout=120).tables)
    capacity = next((t for t in found if t.name == "capacity"), None)
    fits = [a for request in html_report.fit_requests(named, capacity, devices)
            for a in _pages(fleet.Fit, request, "answers", timeout=60)] if named else None
    try:
        index = html_report.write(out, devices, rows, found, fits)
    except OSError as exc:
        _fail(f"cannot write the report to {out}: {exc.strerror or exc}")
    typer.echo(f"report written to {index} (tables also in {index.parent / 'tables.md'})")


@app.command()
@user_errors
def export(
    db: Db = None,
    out: Annotated[Optional[pathlib.Path], typer.Option(help="File to write (default: standard output).")] = None,
) -> None:
    """Every stored result as JSONL: one result (with its device's inventory) per line, a stable schema."""
    from fleetfit.coordinator.service.exchange import export_lines
    from fleetfit.coordinator.service.store import Store

    store = Store(db or default_db_path())
    try:
        lines = export_lines(store)
        if out is None:
            for line in lines:
                typer.echo(line)
            return
        try:
            with open(out, "w") as f:
                count = sum(f.write(line + "\n") > 0 for line in lines)
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror or exc}")
        typer.echo(f"exported {count} results to {out}", err=True)
    finally:
        store.close()


@app.command("import")
@user_errors
def import_results(
    file: Annotated[pathlib.Path, typer.Argument(help="A file `fleetfit export` wrote ('-': standard input).")],
    db: Db = None,
) -> None:
    """Read exported results into this coordinator's database; idempotent on result ids, every line checked as a
    device's report is (exit 1 when a line was refused; the others are stored)."""
    import sys

    from fleetfit.coordinator.service.exchange import import_lines
    from fleetfit.coordinator.service.ingest import Quotas
    from fleetfit.coordinator.service.store import Store

    try:
        source = sys.stdin if str(file) == "-" else open(file, encoding="utf-8", errors="replace")
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}")
    # An operator's import is not a device's traffic: the per-device quotas do not apply to it.
    store = Store(db or default_db_path(), Quotas(results_per_hour=2**62, models_per_day=2**62, bytes_per_hour=2**62))
    try:
        with source:
            summary = import_lines(store, source)
    finally:
        store.close()
    from fleetfit.coordinator.answers.render import clean

    for line in summary.refused[:20]:
        typer.echo(f"refused {clean(line)}", err=True)
    if len(summary.refused) > 20:
        typer.echo(f"... and {len(summary.refused) - 20} more refused lines", err=True)
    typer.echo(f"imported {summary.added} results ({summary.duplicates} already stored, {len(summary.refused)} "
               f"refused), {summary.devices_added} new devices")
    if summary.refused:
        raise typer.Exit(1)


@app.command()
@user_errors
def quickstart(
    db: Annotated[Optional[pathlib.Path], typer.Option(
        help="SQLite file (default: quickstart.sqlite3 beside serve's default database, never that database).")] = None,
    n_prompt: Annotated[int, typer.Option(help="Prompt tokens for the prefill test.")] = 512,
    n_gen: Annotated[int, typer.Option(help="Tokens for the decode test.")] = 128,
    repetitions: Annotated[int, typer.Option(help="Runs of each test (mean ± stdev).")] = 5,
) -> None:
    """Coordinator + local agent on this machine: profile SmolLM2-135M at Q4_1/F16/Q8_0/Q4_0, print the tables."""
    from fleetfit.coordinator import quickstart as qs

    for name, value in (("n-prompt", n_prompt), ("n-gen", n_gen), ("repetitions", repetitions)):
        if value < 1:
            _fail(f"--{name} must be at least 1, got {value}")
    qs.run(db or default_db_path().with_name("quickstart.sqlite3"), typer.echo, n_prompt, n_gen, repetitions)


if __name__ == "__main__":
    app()


def _register_models() -> None:
    from fleetfit.coordinator import models_cli

    app.add_typer(models_cli.app, name="models")


_register_models()
