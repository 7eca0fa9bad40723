"""The contract's closed sets (enums) as the short lower-case words people and their scripts read, and the string
fields those enums replaced.

One rule maps both ways: a value's word is its name without the enum's prefix, in lower case
(PROVENANCE_KIND_MEASURED <-> "measured", VERDICT_DOES_NOT_FIT <-> "does_not_fit"); UNSPECIFIED is "".

Until the change, these were strings under other field numbers (now `reserved`). Such messages are still read:
- `upgrade(message)`: a message parsed from old bytes (a stored result, an old agent's report) keeps the old
  string as an unknown field; this sets the enum from it (the enum, when already set, wins).
- `rename_out` / `rename_in`: JSON (CLI outputs, `fleetfit export`, the agent's probe cache) keeps the old key and
  the word ("provenance": {"kind": "measured"}), so users' scripts and older export files read the same.
"""

import re
from typing import Optional

from google.protobuf import json_format, unknown_fields

from fleetfit.v1 import fleetfit_pb2 as pb


class Vocabulary:
    """One enum's values and their words."""

    def __init__(self, enum):
        self.enum = enum
        self.prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.DESCRIPTOR.name).upper() + "_"
        self._words = {v.number: ("" if v.name.endswith("_UNSPECIFIED") else v.name[len(self.prefix):].lower())
                       for v in enum.DESCRIPTOR.values}
        self._codes = {w: n for n, w in self._words.items()}

    def word(self, value: int) -> str:
        """The word of a value ("" for UNSPECIFIED, and for a number this contract does not define)."""
        return self._words.get(value, "")

    def code(self, word: str) -> int:
        """The value of a word ("" -> UNSPECIFIED); ValueError for a word that is none of them."""
        if word not in self._codes:
            raise ValueError(f"{word[:40]!r} is not one of {', '.join(w for w in self._codes if w)}")
        return self._codes[word]

    def words(self) -> tuple[str, ...]:
        return tuple(w for w in self._codes if w)


PROVENANCE = Vocabulary(pb.ProvenanceKind)
VERDICT = Vocabulary(pb.Verdict)
DEVICE_STATUS = Vocabulary(pb.DeviceStatus)
JOB_STATE = Vocabulary(pb.JobState)
BOTTLENECK = Vocabulary(pb.Bottleneck)

# message -> [(old field number, old name, enum field, vocabulary)]
REPLACED = {
    "fleetfit.v1.Provenance": [(1, "kind", "provenance_kind", PROVENANCE)],
    "fleetfit.v1.ServingPoint": [(9, "energy_provenance", "energy_provenance_kind", PROVENANCE)],
    "fleetfit.v1.PhaseEnergy": [(5, "provenance", "provenance_kind", PROVENANCE)],
    "fleetfit.v1.PowerTelemetry": [(3, "provenance", "provenance_kind", PROVENANCE)],
    "fleetfit.v1.Device": [(5, "status", "device_status", DEVICE_STATUS)],
    "fleetfit.v1.JobStatus": [(3, "state", "job_state", JOB_STATE)],
    "fleetfit.v1.Roofline": [(11, "bottleneck", "bottleneck_kind", BOTTLENECK)],
    "fleetfit.v1.FitFigure": [(2, "provenance", "provenance_kind", PROVENANCE)],
    "fleetfit.v1.FitAnswer": [(3, "verdict", "fit_verdict", VERDICT), (16, "provenance", "provenance_kind", PROVENANCE)],
}
_LENGTH_DELIMITED = 2


def upgrade(message):
    """Set each enum of `message` (and of the messages inside it) that is unset from the string its old field
    number still carries as an unknown field; returns `message`. A word that is none of the enum's stays unset."""
    for old_number, _, field, vocabulary in REPLACED.get(message.DESCRIPTOR.full_name, ()):
        if getattr(message, field):
            continue
        for unknown in unknown_fields.UnknownFieldSet(message):
            if unknown.field_number == old_number and unknown.wire_type == _LENGTH_DELIMITED:
                try:
                    setattr(message, field, vocabulary.code(bytes(unknown.data).decode("utf-8")))
                except (UnicodeDecodeError, ValueError):
                    pass
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.full_name.startswith("google.protobuf."):
            continue
        if descriptor.message_type.GetOptions().map_entry:
            items = value.values() if descriptor.message_type.fields_by_name["value"].message_type else ()
        else:
            items = value if descriptor.is_repeated else (value,)
        for item in items:
            upgrade(item)
    return message


def rename_out(descriptor, found: dict) -> None:
    """In one message's JSON (json_format's, proto field names): each enum under its old key, as its word."""
    for _, old, field, vocabulary in REPLACED.get(descriptor.full_name, ()):
        name = found.pop(field, None)
        if name is not None:
            found[old] = vocabulary.word(vocabulary.enum.Value(name) if isinstance(name, str) else name)


def rename_in(descriptor, found) -> None:
    """The reverse of rename_out on a JSON object about to be parsed (`parse_dict`), through nested messages."""
    if not isinstance(found, dict):
        return
    for _, old, field, vocabulary in REPLACED.get(descriptor.full_name, ()):
        if old in found:
            word = found.pop(old)
            try:
                found.setdefault(field, vocabulary.enum.Name(vocabulary.code(word if isinstance(word, str) else "?")))
            except ValueError as exc:
                raise json_format.ParseError(f"{descriptor.name}.{old}: {exc}") from None
    for field in descriptor.fields:
        kind = field.message_type
        if field.name not in found or kind is None or kind.full_name.startswith("google.protobuf."):
            continue
        value = found[field.name]
        if kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"].message_type
            items = value.values() if entry is not None and isinstance(value, dict) else ()
            kind = entry
        else:
            items = value if isinstance(value, list) else (value,)
        for item in items:
            rename_in(kind, item)


def parse_dict(found: dict, message, ignore_unknown_fields: bool = False):
    """json_format.ParseDict that also reads the old keys and words (as `message_dict` writes them)."""
    rename_in(message.DESCRIPTOR, found)
    return json_format.ParseDict(found, message, ignore_unknown_fields=ignore_unknown_fields)


def weakest(*kinds: int) -> int:
    """The weakest of some provenance kinds (measured < predicted < estimated), unspecified ones ignored."""
    return max((k for k in kinds if k), default=pb.PROVENANCE_KIND_UNSPECIFIED)


def provenance_word(kind: Optional[int]) -> str:
    return PROVENANCE.word(kind or 0)
