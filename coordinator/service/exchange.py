"""`fleetfit export` and `fleetfit import`: every result as JSONL, and such a file read into another coordinator.

One line per result, a stable schema: {"schema": "fleetfit.result.v1", "result": <ProfileResult>, "device":
<DeviceInventory of its device>} with the wire message's field names and integers as numbers. Import is
idempotent on result ids (a line already stored is a duplicate; the same id with other figures is refused), and
an imported file is untrusted input: each line is bounded, parsed strictly and checked by ingest exactly as a
device's report is; a refused line is named and skipped, never stored, and nothing stored is changed. A line
joins a device already here only when its inventory is the same machine (`same_machine`): another machine
claiming the id is refused, never merged, so no file can put results under another device's name.
"""

import dataclasses
import json
import time
from typing import IO, Iterator

from google.protobuf import json_format

from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.service.store import LOST_AFTER_S, ConflictingResult, QuotaExceeded, Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.records import message_dict
from fleetfit.v1.words import parse_dict

SCHEMA = "fleetfit.result.v1"
MAX_LINE_BYTES = 4 * ingest.MAX_MESSAGE_BYTES  # JSON of a message at the size bound, with room for escapes


def export_lines(store: Store) -> Iterator[str]:
    devices = {d.inventory.device_id: d.inventory for d in store.devices()}
    for result in store.results():
        line = {"schema": SCHEMA, "result": message_dict(result)}
        if result.device_id in devices:
            line["device"] = message_dict(devices[result.device_id])
        yield json.dumps(line, separators=(",", ":"), allow_nan=False)


@dataclasses.dataclass
class ImportSummary:
    added: int = 0
    duplicates: int = 0
    devices_added: int = 0
    refused: list[str] = dataclasses.field(default_factory=list)  # "line N: why", one per refused line


def _parse(line: str) -> tuple[pb.ProfileResult, pb.DeviceInventory | None]:
    if len(line) > MAX_LINE_BYTES:
        raise ingest.Refused(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        found = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ingest.Refused(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits; arrays nested past the stack
        raise ingest.Refused(f"not JSON this reads ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(found, dict) or found.get("schema") != SCHEMA:
        raise ingest.Refused(f"not a {SCHEMA} line (fleetfit export writes them)")
    try:
        result = parse_dict(found.get("result"), pb.ProfileResult())
        device = parse_dict(found["device"], pb.DeviceInventory()) if found.get("device") is not None else None
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        raise ingest.Refused(f"not a result: {str(exc).splitlines()[0][:200]}") from None
    ingest.check_result(result)
    if not result.result_id:
        raise ingest.Refused("result.result_id is empty")
    if device is not None:
        ingest.check_inventory(device)
        if device.device_id != result.device_id:
            raise ingest.Refused(f"device {device.device_id[:40]!r} is not the result's {result.device_id[:40]!r}")
    return result, device


# What makes an inventory another machine: its hardware and name, not what changes on one machine (free memory,
# backends and their models, driver and agent versions, probes).
MACHINE = ("hostname", "arch", "cpu_model", "cpu_cores_physical", "cpu_cores_logical", "ram_total_bytes")


def machine(inventory: pb.DeviceInventory) -> tuple:
    return (*(getattr(inventory, f) for f in MACHINE), sorted((g.name, g.memory_total_bytes) for g in inventory.gpus))


def same_machine(a: pb.DeviceInventory, b: pb.DeviceInventory) -> str | None:
    """None when `a` and `b` describe one machine, else which of its parts differ (one line)."""
    differ = [name for name, x, y in zip((*MACHINE, "gpus"), machine(a), machine(b)) if x != y]
    return ", ".join(differ) or None


def _bounded_lines(source: IO[str]) -> Iterator[str]:
    """Lines of `source`, none held longer than MAX_LINE_BYTES characters: the rest of a longer one is skipped
    (and the line refused for its length), so a file without line breaks cannot fill memory."""
    while line := source.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith("\n"):
            while (rest := source.readline(MAX_LINE_BYTES)) and not rest.endswith("\n"):
                pass
        yield line


def import_lines(store: Store, lines: IO[str]) -> ImportSummary:
    """Read an export into `store`: unknown devices are added (never in contact here: their first and last
    contact are their results' starts, never so late as to read online), results added unless already stored. A line for a
    device already here (or added earlier in the file) is refused unless its inventory is the same machine.
    Storing a result counts as contact from its device, so each device's contact times are put back afterwards:
    an import brings no device online."""
    summary = ImportSummary()
    stored = store.devices()
    seen = {d.inventory.device_id: (d.first_seen_unix_s, d.last_seen_unix_s) for d in stored}
    inventories = {d.inventory.device_id: d.inventory for d in stored}
    added_devices: dict[str, list[float]] = {}  # device id -> starts of its imported results
    touched: set[str] = set()
    for number, line in enumerate(_bounded_lines(lines), 1):
        if not line.strip():
            continue
        try:
            result, device = _parse(line)
            here = inventories.get(result.device_id)
            if here is None:
                if device is None:
                    raise ingest.Refused(f"device {result.device_id[:40]!r} is unknown here and the line has no "
                                         "device inventory")
                store.upsert_device(device)
                inventories[result.device_id] = device
                summary.devices_added += 1
                added_devices[result.device_id] = []
                seen[result.device_id] = (0.0, 0.0)
            elif device is None:
                raise ingest.Refused(f"device {result.device_id[:40]!r} is here and the line has no inventory to "
                                     "show it is the same machine: not merged")
            elif differ := same_machine(here, device):
                raise ingest.Refused(f"device {result.device_id[:40]!r} here is another machine (its {differ} "
                                     "differ): not merged into it")
            touched.add(result.device_id)
            if store.add_result(result):
                summary.duplicates += 1
            else:
                summary.added += 1
            if result.device_id in added_devices:
                added_devices[result.device_id].append(result.started_unix_s)
        except (ingest.Refused, ConflictingResult, QuotaExceeded) as exc:
            summary.refused.append(f"line {number}: {exc}")
    # an imported start is no contact here: never later than the import, nor recent enough to read as online
    latest = time.time() - LOST_AFTER_S - 1
    for device_id in touched:
        starts = added_devices.get(device_id)
        if starts:
            store.set_seen(device_id, min(min(starts), latest), min(max(starts), latest))
        else:
            store.set_seen(device_id, *seen[device_id])
    return summary
