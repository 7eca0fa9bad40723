"""The tables' registry: @table, one build for one or many tables from one snapshot (fit.Snapshot), the options
each build reads (a key no table read is refused), the wire cells and how a table renders; and the small helpers
every family of tables shares.

`fleetfit limits NAME` and the GetTable RPC serve every table registered with @table. A cell is a number, a string,
or None where there is no figure (rendered as "n/a", never as 0).
"""

import dataclasses
from typing import Callable

from google.protobuf import json_format, struct_pb2

from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.devices import DeviceLookupError
from fleetfit.coordinator.answers.devices import find as find_device
from fleetfit.coordinator.answers.limits import DEFAULT_SHAPE
from fleetfit.models import backends
from fleetfit.models.catalogue import Architecture
from fleetfit.v1 import fleetfit_pb2 as pb

class TableError(ValueError):
    """An unknown table or a bad option; the message is one line for users."""


Fleet = fit_rules.Snapshot  # one read of the store; every table's cells are fit's answers from it


@dataclasses.dataclass(frozen=True)
class TableData:
    columns: list[str]
    rows: list[list]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    build: Callable[[Fleet, dict[str, str]], TableData]


TABLES: dict[str, TableSpec] = {}


def table(name: str, title: str):
    def register(build):
        TABLES[name] = TableSpec(name, title, build)
        return build

    return register


def float_option(options: dict[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    try:
        value = float(options.get(key, default))
    except ValueError:
        raise TableError(f"option {key} must be a number, got {options[key]!r}") from None
    if value < minimum:
        raise TableError(f"option {key} must be at least {minimum:g}, got {value:g}")
    return value


def _cell(value) -> struct_pb2.Value:
    if isinstance(value, render.Figure):  # a struct on the wire: value, stdev, band, provenance, verdict
        figure = struct_pb2.Value()
        figure.struct_value.update({k: v for k, v in dataclasses.asdict(value).items() if v is not None})
        return figure
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


MAX_SHAPES = 16  # GetTableRequest.shapes


def checked_shapes(messages) -> dict[str, Architecture]:
    """GetTableRequest.shapes by name, each checked (models/shapes.py checked), or TableError (one line)."""
    from fleetfit.models.shapes import checked

    if len(messages) > MAX_SHAPES:
        raise TableError(f"at most {MAX_SHAPES} shapes, got {len(messages)}")
    try:
        return {m.name: checked(m, m.name) for m in messages}
    except ValueError as exc:
        raise TableError(str(exc)) from None


def build_from_store(name: str, store, options: dict[str, str], shapes: dict[str, Architecture] | None = None
                     ) -> pb.Table:
    return build_many([name], store, options, shapes)[0]


def build_many(names: list[str], store, options: dict[str, str], shapes: dict[str, Architecture] | None = None
               ) -> list[pb.Table]:
    """Several tables (`limits all`, the report) from one read of the store: every cell one snapshot's answer."""
    if len(names) > len(TABLES):
        raise TableError(f"at most {len(TABLES)} tables in one request, got {len(names)}")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise TableError(f"unknown table {unknown[0]!r} (known: {', '.join(TABLES)})")
    fleet = Fleet.of_store(store, shapes)
    asked = ReadOptions(options)
    found = [build(name, fleet, asked) for name in names]
    asked.check(names)
    return found


class ReadOptions(dict):
    """A table's options, recording each key its build read: a key no table read is a typo, refused (TableError)
    with a did-you-mean, never ignored."""

    def __init__(self, options: dict[str, str]):
        super().__init__(options)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def check(self, names: list[str]) -> None:
        unknown = sorted(set(self) - self.read)
        if not unknown:
            return
        import difflib

        near = [k for k in sorted(self.read) if k.startswith(unknown[0])] or \
            difflib.get_close_matches(unknown[0], sorted(self.read), n=1, cutoff=0.5)
        known = ", ".join(sorted(self.read)) or "none"
        raise TableError(f"unknown option {unknown[0]!r} for {', '.join(names)}"
                         f"{f' (did you mean {near[0]}? ' if near else ' ('}known: {known})")


def build(name: str, fleet: Fleet, options: dict[str, str]) -> pb.Table:
    spec = TABLES.get(name)
    if spec is None:
        raise TableError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    data = _with_device_ids(spec.build(fleet, options), fleet)
    return pb.Table(name=spec.name, title=spec.title, columns=data.columns, notes=data.notes,
                    rows=[pb.TableRow(cells=[_cell(c) for c in row]) for row in data.rows])


DEVICE_ID_COLUMN = "device id"


def _with_device_ids(data: TableData, fleet: Fleet) -> TableData:
    """The table with a "device id" column last where it has a "device" column and none yet: display names are
    unique by construction (devices.display_names), so each names one id; tools and the report key rows by it."""
    if "device" not in data.columns or DEVICE_ID_COLUMN in data.columns:
        return data
    column, ids = data.columns.index("device"), {name: i for i, name in fleet.names.items()}
    return dataclasses.replace(data, columns=[*data.columns, DEVICE_ID_COLUMN],
                               rows=[[*row, ids.get(row[column], row[column] if row[column] in fleet.names else None)]
                                     for row in data.rows])


def typed_cell(value: struct_pb2.Value):
    """A wire cell as the typed cell it was built from (None, a number, text, a bool or a render.Figure)."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "struct_value":
        fields = {f.name for f in dataclasses.fields(render.Figure)}
        found = json_format.MessageToDict(value.struct_value)
        return render.Figure(**{"value": None, **{k: v for k, v in found.items() if k in fields}})
    return getattr(value, kind)


def cell_text(value: struct_pb2.Value) -> str:
    return render.display(typed_cell(value))


def render_table(message: pb.Table, fmt: str, wide: bool = False) -> str:
    """`message` in format `fmt` (render.render: people's formats leave out the device id column and the other
    WIDE_ONLY ones unless `wide`; display names are unique by construction, devices.with_display_names), with the
    table's notes under it in people's formats."""
    body = [[typed_cell(c) for c in row.cells] for row in message.rows]
    text = render.render(list(message.columns), body, fmt, table=message.name, wide=wide)
    if fmt in ("table", "md") and message.notes:
        text += "\n\n" + render.notes_text(list(message.notes), fmt)
    return text


def shape_option(options: dict[str, str]) -> str:
    wanted = options.get("shape", DEFAULT_SHAPE).strip()
    if not wanted or not wanted.split()[0].startswith("pp") or "/tg" not in wanted.split()[0]:
        raise TableError(f"option shape must start like pp512/tg128, got {wanted!r}")
    return wanted


def device_option(fleet: Fleet, options: dict[str, str]) -> str | None:
    """The device id an option `device` names (an id, or a hostname one device has)."""
    if not options.get("device"):
        return None
    try:
        return find_device(fleet.devices, options["device"]).inventory.device_id
    except DeviceLookupError as exc:
        raise TableError(f"option device: {exc}") from None


def params_text(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def runs_precision(spec: backends.BackendSpec, quant: str) -> bool:
    try:
        return spec.canonical(quant) == quant
    except Exception:
        return False
