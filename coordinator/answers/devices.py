"""Devices as people see them: a display name for each, and finding one by id, display name or hostname.

The device id is the key everywhere; a hostname is only a name (cloned boards share one, and a device chooses
its own), so nothing is keyed or merged on it. A display name is the hostname, plus the device's short id when
another device of the fleet has the same hostname or a name that looks the same, plus its labels.
"""

import unicodedata
from collections import Counter

from fleetfit.v1 import fleetfit_pb2 as pb

SHORT_ID_CHARS = 8


class DeviceLookupError(LookupError):
    """No device, or more than one, answers to a key; the message is one line and lists the ids."""


def short_id(device_id: str, hostname: str) -> str:
    """The part of the id that tells devices apart: without a leading "<hostname>-", at most 8 characters."""
    rest = device_id.removeprefix(f"{hostname}-") if hostname else device_id
    return rest if len(rest) <= SHORT_ID_CHARS + 4 else rest[:SHORT_ID_CHARS]


def _look(text: str) -> str:
    """What a name looks like to a person: compatibility forms folded (fullwidth, ligatures), case and spacing
    ignored, format characters (zero-width spaces, bidi controls) dropped. Names that look alike are not unique."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cf", "Cc"))
    return " ".join(text.casefold().split())


def _name(device: pb.Device, level: int, shorts: dict[str, int]) -> str:
    """A device's name at a level of detail: 0 hostname, 1 with its short id (the whole id when two devices
    share the short one), 2 with the whole id, 3 the id alone; then its labels."""
    inv = device.inventory
    host, short = inv.hostname, short_id(inv.device_id, inv.hostname)
    if level >= 3 or not host:
        return inv.device_id
    if level == 1 and shorts[short] == 1:
        host += f" ({short})"
    elif level >= 1:
        host += f" ({inv.device_id})"
    labels = " [" + ",".join(f"{k}={v}" for k, v in sorted(device.labels.items())) + "]" if device.labels else ""
    return host + labels


def display_names(devices: list[pb.Device]) -> dict[str, str]:
    """device id -> display name: unique by construction, and never another device's id. A device shows its
    hostname (and labels); where that is shared with, or looks like, another device's hostname, name or id, both
    show more of their ids until no two look alike (so a hostname chosen to read like another device's name,
    e.g. `lab-gpu-1 [site=lab]`, never passes for it)."""
    hosts = Counter(_look(d.inventory.hostname) for d in devices)
    shorts = Counter(short_id(d.inventory.device_id, d.inventory.hostname) for d in devices)
    level = {d.inventory.device_id: int(hosts[_look(d.inventory.hostname)] > 1) for d in devices}
    while True:
        names = {d.inventory.device_id: _name(d, level[d.inventory.device_id], shorts) for d in devices}
        taken = Counter(_look(n) for n in names.values())
        ids = Counter(_look(i) for i in names)
        clashing = [i for i, n in names.items() if level[i] < 3 and taken[_look(n)] + ids[_look(n)] -
                    (_look(n) == _look(i)) > 1]
        if not clashing:  # each round raises a level (at most 3 in all); at level 3 the names are the ids
            return names
        for i in clashing:
            level[i] += 1


def with_display_names(devices: list[pb.Device]) -> list[pb.Device]:
    names = display_names(devices)
    for d in devices:
        d.display_name = names[d.inventory.device_id]
    return devices


def find(devices: list[pb.Device], key: str) -> pb.Device:
    """The device whose id is `key`, else the one whose display name is (or looks like) `key`, else the one
    device whose hostname is `key`; DeviceLookupError (one line, the candidates' ids) when none or several are.
    Display names are never another device's id, so an id and a display name never answer for two devices."""
    names = display_names(devices)
    for what, matches in (("id", lambda d: d.inventory.device_id == key),
                          ("display name", lambda d: names[d.inventory.device_id] == key),
                          ("a display name like", lambda d: _look(names[d.inventory.device_id]) == _look(key)),
                          # a hostname, or a name the device had before another device made it ambiguous: every
                          # device that could be meant is a candidate, so a stale name never picks an impostor
                          ("hostname or name", lambda d: d.inventory.hostname == key or
                           _look(_name(d, 0, Counter())) == _look(key))):
        found = [d for d in devices if matches(d)]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(sorted(d.inventory.device_id for d in found))
            if what == "hostname or name":
                what = "hostname" if all(d.inventory.hostname == key for d in found) else "a hostname or name like"
            raise DeviceLookupError(f"{len(found)} devices have {what} {key!r}: name one by id ({ids})")
    raise DeviceLookupError(f"no device {key!r} (give a device id, a display name, or a hostname that one device "
                            f"has; `fleetfit devices` lists them)")
