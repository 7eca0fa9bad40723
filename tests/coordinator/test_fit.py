from fleetfit.coordinator.fit import fit
from fleetfit.coordinator.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb

MIB = 2**20


def device(device_id: str, ram_mib: int) -> pb.Device:
    return pb.Device(inventory=pb.DeviceInventory(device_id=device_id, hostname=device_id, ram_total_bytes=ram_mib * MIB))


def measured(result_id, device_id, quant, peak_mib, decode, failure=pb.FAILURE_KIND_UNSPECIFIED, error=""):
    r = pb.ProfileResult(result_id=result_id, device_id=device_id, model_name="smollm2-135m", quant=quant,
                         request=pb.ProfileRequest(backend="llama.cpp", quant=quant), failure=failure, error=error,
                         decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]))
    if not failure:
        r.peak_rss_bytes = peak_mib * MIB
    return r


def test_latest_result_per_device_model_quant_backend_wins():
    results = [measured("a", "pi", "Q4_0", 200, 10.0), measured("b", "pi", "Q4_0", 210, 12.0)]
    rows = limit_rows(results, [device("pi", 4096)])
    assert [(r.result_id, r.decode_tokens_per_s.mean) for r in rows] == [("b", 12.0)]


def test_verdicts():
    devices = [device("big", 8192), device("small", 100), device("slow", 8192), device("oom", 8192),
               device("new", 8192)]
    results = [measured("1", "big", "F16", 300, 50.0), measured("2", "small", "F16", 300, 50.0),
               measured("3", "slow", "F16", 300, 2.0),
               measured("4", "oom", "F16", 0, 0.0, pb.FAILURE_KIND_OOM, "killed by the OOM killer")]
    rows = limit_rows(results, devices)
    answers = {a.device_id: a for a in fit("smollm2-135m", "F16", "llama.cpp", devices, rows, min_decode_tps=5.0)}
    assert answers["big"].verdict == "fits" and answers["big"].evidence.result_id == "1"
    assert answers["small"].verdict == "does_not_fit" and "exceeds" in answers["small"].reason
    assert answers["slow"].verdict == "does_not_fit" and "below" in answers["slow"].reason
    assert answers["oom"].verdict == "does_not_fit" and "out of memory" in answers["oom"].reason
    assert answers["new"].verdict == "unknown" and not answers["new"].HasField("evidence")
