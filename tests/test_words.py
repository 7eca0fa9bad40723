"""The contract's enums and their words (fleetfit/v1/words.py): one mapping, and what was written before the enums
(strings under the now-reserved field numbers: stored rows, old agents' reports, export files, probe caches) still
reads as the same words."""

import json
import time

import pytest
from google.protobuf import json_format

from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import records, words


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, data: bytes | str) -> bytes:
    """One length-delimited field on the wire (a string or a message), as an older writer put it."""
    data = data.encode() if isinstance(data, str) else data
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def old_result_bytes() -> bytes:
    """A ProfileResult as the contract before the enums serialized it: provenance words as strings."""
    base = pb.ProfileResult(result_id="old-1", device_id="dev-1", model_name="smollm2-135m", quant="Q4_0",
                            request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0", parallel=[2]),
                            decode_tokens_per_s=pb.Stat(mean=100.0, samples=[100.0]))
    provenance = pb.Provenance(method="llama_decode wall clock").SerializeToString() + field(1, "measured")
    phase = pb.PhaseEnergy(phase="decode", source="s", average_power_w=5.0, joules_per_token=0.05,
                           tokens=100).SerializeToString() + field(5, "estimated")
    power = pb.PowerTelemetry(headline_source="s").SerializeToString() + field(1, phase) + field(3, "estimated")
    stat = pb.Stat(mean=1.0, samples=[1.0])
    point = pb.ServingPoint(
        parallel=2, aggregate_decode_tokens_per_s=pb.Stat(mean=150.0, samples=[150.0]),
        per_stream_decode_tokens_per_s=pb.Stat(mean=75.0, samples=[75.0]), prefill_tokens_per_s=stat,
        ttft_ms_p50=stat, ttft_ms_p99=stat, peak_memory_bytes=pb.Stat(mean=1e8, samples=[1e8]),
        decode_energy_per_token_j=0.04).SerializeToString() + field(9, "estimated")
    roofline = pb.Roofline(achieved_gb_per_s=20.0).SerializeToString() + field(11, "memory")
    return (base.SerializeToString() + field(37, provenance) + field(50, power) + field(66, point)
            + field(51, roofline))


def test_every_value_has_one_word_and_back():
    assert words.VERDICT.words() == ("fits_comfortably", "tight", "does_not_fit", "unknown")
    assert words.PROVENANCE.words() == ("measured", "predicted", "estimated")
    assert words.DEVICE_STATUS.words() == ("online", "lost", "probing")
    assert words.JOB_STATE.words() == ("queued", "running", "done", "failed", "cancelled")
    assert words.BOTTLENECK.words() == ("memory", "compute")
    for vocabulary in (words.VERDICT, words.PROVENANCE, words.DEVICE_STATUS, words.JOB_STATE, words.BOTTLENECK):
        for value in vocabulary.enum.DESCRIPTOR.values:
            assert vocabulary.code(vocabulary.word(value.number)) == value.number
    assert words.PROVENANCE.word(pb.PROVENANCE_KIND_UNSPECIFIED) == "" and words.PROVENANCE.word(99) == ""
    with pytest.raises(ValueError, match="'guessed' is not one of measured, predicted, estimated"):
        words.PROVENANCE.code("guessed")


def test_old_bytes_read_as_enums():
    result = words.upgrade(pb.ProfileResult.FromString(old_result_bytes()))
    assert result.provenance.provenance_kind == pb.PROVENANCE_KIND_MEASURED
    assert result.power.provenance_kind == pb.PROVENANCE_KIND_ESTIMATED
    assert result.power.phases[0].provenance_kind == pb.PROVENANCE_KIND_ESTIMATED
    assert result.serving[0].energy_provenance_kind == pb.PROVENANCE_KIND_ESTIMATED
    assert result.roofline.bottleneck_kind == pb.BOTTLENECK_MEMORY
    assert result.provenance.method == "llama_decode wall clock"  # the rest of the message is untouched


def test_a_set_enum_wins_and_an_unknown_word_stays_unset():
    both = pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_PREDICTED).SerializeToString() + field(1, "measured")
    assert words.upgrade(pb.Provenance.FromString(both)).provenance_kind == pb.PROVENANCE_KIND_PREDICTED
    odd = words.upgrade(pb.Provenance.FromString(field(1, "guessed") + field(2, "m")))
    assert odd.provenance_kind == pb.PROVENANCE_KIND_UNSPECIFIED and odd.method == "m"
    not_text = words.upgrade(pb.Provenance.FromString(field(1, b"\xff\xfe")))
    assert not_text.provenance_kind == pb.PROVENANCE_KIND_UNSPECIFIED


def test_an_old_agents_report_passes_ingest():
    """An agent from before the enums reports serving energy with a string provenance: ingest reads it as one."""
    old = pb.ProfileResult.FromString(old_result_bytes())
    ingest.check_result(old)
    bad = pb.ProfileResult.FromString(old_result_bytes().replace(b"\x4a\x09estimated", b"\x4a\x09predicted"))
    with pytest.raises(ingest.Refused, match="energy_provenance is 'predicted'"):
        ingest.check_result(bad)


def test_rows_stored_before_the_enums_read_the_same(db_url):
    """Results, inventories and quality results are stored as serialized protobuf: a row written the old way
    (raw bytes straight into the table) still answers with its provenance."""
    store = Store(db_url)
    try:
        probe = pb.BandwidthProbe(target="cpu", gb_per_s=10.0).SerializeToString() + field(
            6, pb.Provenance(method="stream_triad_numpy").SerializeToString() + field(1, "measured"))
        inventory = pb.DeviceInventory(device_id="dev-1", hostname="box", ram_total_bytes=8 << 30).SerializeToString() \
            + field(20, field(1, probe))
        now = time.time()
        with store.db.transaction() as execute:
            execute("INSERT INTO devices (device_id, inventory, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                    ("dev-1", inventory, now, now))
            execute("INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, received, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ("old-1", "dev-1", None, "smollm2-135m", "Q4_0", "llama.cpp", 0, now, old_result_bytes()))
        (result,) = store.results()
        assert result.provenance.provenance_kind == pb.PROVENANCE_KIND_MEASURED
        assert result.serving[0].energy_provenance_kind == pb.PROVENANCE_KIND_ESTIMATED
        (row,) = limit_rows(store.results(), store.devices())
        assert words.PROVENANCE.word(row.provenance.provenance_kind) == "measured"
        (device,) = store.devices()
        assert device.inventory.probes.bandwidth[0].provenance.provenance_kind == pb.PROVENANCE_KIND_MEASURED
        assert device.device_status == pb.DEVICE_STATUS_ONLINE
        assert store.add_result(pb.ProfileResult.FromString(old_result_bytes())) is True  # an outbox resend: duplicate
    finally:
        store.close()


def test_json_keeps_the_old_keys_and_words_both_ways():
    answer = pb.FitAnswer(fit_verdict=pb.VERDICT_DOES_NOT_FIT, provenance_kind=pb.PROVENANCE_KIND_PREDICTED,
                          memory_bytes=pb.FitFigure(value=1.0, provenance_kind=pb.PROVENANCE_KIND_MEASURED))
    found = records.message_dict(answer)
    assert found == {"verdict": "does_not_fit", "provenance": "predicted",
                     "memory_bytes": {"value": 1.0, "provenance": "measured"}}
    assert words.parse_dict(json.loads(json.dumps(found)), pb.FitAnswer()) == answer
    assert records.message_dict(pb.Device(device_status=pb.DEVICE_STATUS_LOST))["status"] == "lost"
    assert records.message_dict(pb.JobStatus(job_state=pb.JOB_STATE_DONE)) == {"state": "done"}
    roofline = pb.Roofline(bottleneck_kind=pb.BOTTLENECK_COMPUTE)
    assert records.message_dict(roofline) == {"bottleneck": "compute"}
    assert words.parse_dict({"bottleneck": "compute"}, pb.Roofline()) == roofline
    assert records.message_dict(pb.FitFigure(value=1.0), defaults=True)["provenance"] == ""
    # json_format's own keys (a file written by MessageToJson) read too
    canonical = json.loads(json_format.MessageToJson(answer))
    assert words.parse_dict(canonical, pb.FitAnswer()) == answer


def test_an_export_line_from_before_the_enums_parses():
    old = {"provenance": {"kind": "measured", "method": "m"}, "serving": [{"parallel": 2,
           "energy_provenance": "estimated"}], "power": {"provenance": "measured",
           "phases": [{"phase": "decode", "provenance": "measured"}]}}
    result = words.parse_dict(old, pb.ProfileResult())
    assert result.provenance.provenance_kind == pb.PROVENANCE_KIND_MEASURED
    assert result.serving[0].energy_provenance_kind == pb.PROVENANCE_KIND_ESTIMATED
    assert result.power.phases[0].provenance_kind == pb.PROVENANCE_KIND_MEASURED
    with pytest.raises(json_format.ParseError, match="Provenance.kind: 'guessed' is not one of"):
        words.parse_dict({"provenance": {"kind": "guessed"}}, pb.ProfileResult())
