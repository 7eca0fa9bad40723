"""Devices as people see them: a display name for each, and finding one by id or hostname.

The device id is the key everywhere; a hostname is only a name (cloned boards share one), so nothing is keyed
or merged on it. A display name is the hostname, plus the device's short id when another device of the fleet
has the same hostname, plus its labels.
"""

from fleetfit.v1 import fleetfit_pb2 as pb

SHORT_ID_CHARS = 8


class DeviceLookupError(LookupError):
    """No device, or more than one, answers to a key; the message is one line and lists the ids."""


def short_id(device_id: str, hostname: str) -> str:
    """The part of the id that tells devices apart: without a leading "<hostname>-", at most 8 characters."""
    rest = device_id.removeprefix(f"{hostname}-") if hostname else device_id
    return rest if len(rest) <= SHORT_ID_CHARS + 4 else rest[:SHORT_ID_CHARS]


def display_names(devices: list[pb.Device]) -> dict[str, str]:
    """device id -> display name, unique within `devices`."""
    by_host: dict[str, list[str]] = {}
    for d in devices:
        by_host.setdefault(d.inventory.hostname, []).append(d.inventory.device_id)
    names = {}
    for d in devices:
        inv = d.inventory
        siblings = by_host[inv.hostname]
        name = inv.hostname or inv.device_id
        if inv.hostname and len(siblings) > 1:
            shorts = [short_id(i, inv.hostname) for i in siblings]
            unique = shorts.count(short_id(inv.device_id, inv.hostname)) == 1
            name += f" ({short_id(inv.device_id, inv.hostname) if unique else inv.device_id})"
        if d.labels:
            name += " [" + ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())) + "]"
        names[inv.device_id] = name
    return names


def with_display_names(devices: list[pb.Device]) -> list[pb.Device]:
    names = display_names(devices)
    for d in devices:
        d.display_name = names[d.inventory.device_id]
    return devices


def find(devices: list[pb.Device], key: str) -> pb.Device:
    """The device whose id is `key`, else the one device whose hostname is `key`."""
    for d in devices:
        if d.inventory.device_id == key:
            return d
    same_host = [d for d in devices if d.inventory.hostname == key]
    if len(same_host) == 1:
        return same_host[0]
    if same_host:
        ids = ", ".join(sorted(d.inventory.device_id for d in same_host))
        raise DeviceLookupError(f"{len(same_host)} devices have hostname {key!r}: name one by id ({ids})")
    raise DeviceLookupError(f"no device {key!r} (give a device id, or a hostname that one device has; "
                            f"`fleetfit devices` lists them)")
