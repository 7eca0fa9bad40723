"""The coordinator's tables, by name: each a plain function of the fleet's results and devices.

`fleetfit limits NAME` and the GetTable RPC serve every table registered here with @table. A cell is a
number, a string, or None where there is no figure (rendered as "n/a", never as 0).
"""

import dataclasses
from typing import Callable

from google.protobuf import struct_pb2

from fleetfit.coordinator import render
from fleetfit.coordinator.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb


class TableError(ValueError):
    """An unknown table or a bad option; the message is one line for users."""


@dataclasses.dataclass(frozen=True)
class Fleet:
    results: list[pb.ProfileResult]
    devices: list[pb.Device]


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
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def build(name: str, fleet: Fleet, options: dict[str, str]) -> pb.Table:
    spec = TABLES.get(name)
    if spec is None:
        raise TableError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    data = spec.build(fleet, options)
    return pb.Table(name=spec.name, title=spec.title, columns=data.columns, notes=data.notes,
                    rows=[pb.TableRow(cells=[_cell(c) for c in row]) for row in data.rows])


def _text(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return "n/a"
    if kind == "number_value":
        number = value.number_value
        return f"{number:.0f}" if number.is_integer() and abs(number) >= 1000 else f"{number:.4g}"
    return str(getattr(value, kind))


def render_table(message: pb.Table, fmt: str) -> str:
    body = [[_text(c) for c in row.cells] for row in message.rows]
    text = render.render(list(message.columns), body, fmt, [message])
    if fmt in ("table", "md") and message.notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in message.notes)
    return text


@table("measured", "Measured limits: device × model × quant × backend")
def measured(fleet: Fleet, options: dict[str, str]) -> TableData:
    header, body = render.limit_table(limit_rows(fleet.results, fleet.devices))
    return TableData(header, body, ["every row is measured on the device it names (pp/tg as llama-bench)"])
