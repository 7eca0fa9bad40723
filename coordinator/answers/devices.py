"""Devices as people see them: a display name for each, and finding one by id, display name or hostname.

The device id is the key everywhere; a hostname is only a name (cloned boards share one, and a device chooses
its own), so nothing is keyed or merged on it. A display name is the hostname, plus the device's short id when
another device of the fleet has the same hostname or a name that looks the same, plus its labels.
"""

import functools
import re
import unicodedata
from collections import Counter

from fleetfit.models.cli_common import unseen
from fleetfit.v1 import fleetfit_pb2 as pb

SHORT_ID_CHARS = 8


class DeviceLookupError(LookupError):
    """No device, or more than one, answers to a key; the message is one line and lists the ids."""


def short_id(device_id: str, hostname: str) -> str:
    """The part of the id that tells devices apart: without a leading "<hostname>-", at most 8 characters."""
    rest = device_id.removeprefix(f"{hostname}-") if hostname else device_id
    return rest if len(rest) <= SHORT_ID_CHARS + 4 else rest[:SHORT_ID_CHARS]


# Letters of other scripts drawn like Latin ones, and ASCII people misread (I l 1 |, 0 o), as one look (after casefold).
_HOMOGLYPHS = str.maketrans("авеёкмнорстухѕіјԁһԛԝӏαβεζηικμνορτυχ01|i",
                            "abeekmhopctyxsljdhqwlabezhlkmvoptuxolll")


_ASCII_UNSEEN = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")  # ASCII controls that are not spaces (str.isspace)


@functools.lru_cache(maxsize=1 << 14)  # names recur in every answer (16k: ~8 forms of 2,000 devices, a few MB)
def _look(text: str) -> str:
    """What a name looks like to a person: compatibility forms folded (fullwidth, ligatures), accents, case and
    spacing ignored, characters drawn as nothing (zero-width spaces, bidi controls, Hangul fillers) dropped, and
    letters of other scripts drawn like Latin ones folded (Cyrillic а, Greek ο). Names that look alike are not
    unique; what is left beyond ASCII (any other script) is told apart by the device's short id, see
    display_names."""
    if text.isascii():  # the common case, the same look in C: controls dropped, spaces split, case folded
        return " ".join(_ASCII_UNSEEN.sub("", text).lower().translate(_HOMOGLYPHS).split())
    text = unicodedata.normalize("NFKD", text)
    text = "".join(" " if c.isspace() else c for c in text if c.isspace() or not
                   (unseen(c) or unicodedata.category(c) in ("Mn", "Me")))
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_HOMOGLYPHS).split())


def _name(device: pb.Device, level: int, shorts: dict[str, int], labels: bool = True) -> str:
    """A device's name at a level of detail: 0 hostname, 1 with its short id (the whole id when two devices
    share the short one), 2 with the whole id, 3 the id alone; then its labels (unless not `labels`)."""
    inv = device.inventory
    host, short = inv.hostname, short_id(inv.device_id, inv.hostname)
    if level >= 3 or not host:
        return inv.device_id
    if level == 1 and shorts[short] == 1:
        host += f" ({short})"
    elif level >= 1:
        host += f" ({inv.device_id})"
    if not (labels and device.labels):
        return host
    return host + " [" + ",".join(f"{k}={v}" for k, v in sorted(device.labels.items())) + "]"


def display_names(devices: list[pb.Device]) -> dict[str, str]:
    """device id -> display name: unique by construction, and never another device's id or a name it may be
    shown by. A device shows its hostname (and labels); where that is shared with, or looks like, another device's
    hostname, name or id, it shows more of its id until no two look alike (so a hostname chosen to read like
    another device's name, e.g. `lab-gpu-1 [site=lab]`, never passes for it)."""
    hosts = Counter(_look(d.inventory.hostname) for d in devices)
    shorts = Counter(short_id(d.inventory.device_id, d.inventory.hostname) for d in devices)
    # a hostname that is not all ASCII once folded may look like another in ways no fold knows: it shows its id
    level = {d.inventory.device_id: int(hosts[_look(d.inventory.hostname)] > 1 or
                                        not _look(d.inventory.hostname).isascii()) for d in devices}
    # every name a device is or may be shown by (its id, short id, and its name at each level, with and without
    # its labels: a fleet that grows or shrinks shows it another way): no other device's name, nor a hostname shown
    # bare, may look like one of them, so a name a person read earlier (`lab-gpu-1 (7f3a9c21) [site=lab]`, or the
    # id `lab-gpu-1-7f3a9c21`) is never another device's name, whatever labels that one has
    own = {d.inventory.device_id: {_look(d.inventory.device_id),
                                   _look(short_id(d.inventory.device_id, d.inventory.hostname)),
                                   *(_look(_name(d, at, shorts, with_labels)) for at in (0, 1, 2)
                                     for with_labels in (True, False))} for d in devices}
    ids = Counter(form for forms in own.values() for form in forms)

    def anothers(i: str, text: str) -> bool:
        return ids[_look(text)] - (_look(text) in own[i]) > 0

    hostname = {d.inventory.device_id: d.inventory.hostname for d in devices}
    while True:
        names = {d.inventory.device_id: _name(d, level[d.inventory.device_id], shorts) for d in devices}
        taken = Counter(_look(n) for n in names.values())
        clashing = [i for i, n in names.items() if level[i] < 3 and (
            taken[_look(n)] > 1 or anothers(i, n) or (level[i] == 0 and anothers(i, hostname[i])))]
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
                           _look(_name(d, 0, Counter())) == _look(key) or
                           short_id(d.inventory.device_id, d.inventory.hostname) == key)):
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
