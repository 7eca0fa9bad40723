"""`fleetfit fit FILE`: the operator's CLI reads a config.json or a GGUF header and sends the shape; the
coordinator answers from it for every device (several agents, distinct ids, one hostname)."""

import json
import pathlib
import uuid

import grpc
import pytest

from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
from fleetfit.models import shapes, synth
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import assert_one_line_error, fleet_stub, run_cli
from tests.models.test_synth import PLENTY, tiny

CONFIGS = pathlib.Path(__file__).parent.parent / "fixtures" / "configs"
GIB = 1 << 30


def inventory(device_id: str, ram_gib: int) -> pb.DeviceInventory:
    inv = pb.DeviceInventory(device_id=device_id, hostname="lab-box", ram_total_bytes=ram_gib * GIB)
    inv.probes.bandwidth.add(target="cpu", gb_per_s=20.0)
    inv.probes.matmul.add(target="cpu", gflop_per_s=200.0)
    return inv


def result(device_id: str, model: str, quant: str, decode: float, peak_mib: int) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, model_name=model, quant=quant,
                            request=pb.ProfileRequest(backend="llama.cpp", quant=quant), n_prompt=64, n_gen=16,
                            n_ctx=80, decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]),
                            prefill_tokens_per_s=pb.Stat(mean=10 * decode, samples=[10 * decode]),
                            peak_rss_bytes=peak_mib << 20)


@pytest.fixture()
def served(tmp_path):
    db = tmp_path / "fleet.sqlite3"
    with Store(db) as store:
        store.upsert_device(inventory("box-measured", 16))
        store.upsert_device(inventory("box-new", 4))  # same hostname, nothing measured: estimated figures
        for model, quant, decode, peak in (("smollm2-135m", "Q4_0", 150.0, 180), ("smollm2-135m", "F16", 90.0, 330),
                                           ("tinyllama-1.1b", "Q4_0", 25.0, 800)):
            store.add_result(result("box-measured", model, quant, decode, peak))
    server = BackgroundCoordinator(db, state_dir=tmp_path / "state")
    server.start()
    yield server, {"FLEETFIT_TOKEN": server.operator_token, "FLEETFIT_INSECURE": "1",
                   "FLEETFIT_COORDINATOR": server.address}
    server.stop()


def fit_json(env, *args):
    done = run_cli("fleetfit", "fit", *args, "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return {a["device_id"]: a for a in json.loads(done.stdout)}, done.stderr


def test_fit_a_config_json_and_a_gguf_file(served, tmp_path):
    server, env = served
    config = json.loads((CONFIGS / "qwen3-1.7b.json").read_text()) | {"num_hidden_layers": 24}
    (tmp_path / "my-qwen").mkdir()
    (tmp_path / "my-qwen" / "config.json").write_text(json.dumps(config))
    answers, note = fit_json(env, str(tmp_path / "my-qwen" / "config.json"), "--quant", "Q4_0")
    assert "qwen3, 1.52B parameters" in note
    measured, new = answers["box-measured"], answers["box-new"]
    assert measured["model_name"] == new["model_name"] == "my-qwen"
    assert measured["memory_bytes"]["provenance"] == measured["decode_tokens_per_s"]["provenance"] == "predicted"
    assert new["memory_bytes"]["provenance"] == "estimated" and new["decode_tokens_per_s"]["value"] > 0
    assert 0.8 * GIB < measured["memory_bytes"]["value"] < 2 * GIB  # ~0.9 GB of Q4_0 weights + a 4096 KV cache

    gguf = synth.write_synthetic(tiny("tiny-qwen3", "qwen3", explicit_head_dim=128), "Q8_0", tmp_path / "tiny.gguf",
                                 free_disk_bytes=PLENTY, available_ram_bytes=PLENTY)
    answers, _ = fit_json(env, str(gguf))  # the file's own quant by default
    assert {a["quant"] for a in answers.values()} == {"Q8_0"} and answers["box-measured"]["verdict"] == "fits_comfortably"

    catalogued, note = fit_json(env, str(CONFIGS / "qwen3-1.7b.json"), "--quant", "Q4_0")
    assert "the catalogued qwen3-1.7b" in note and catalogued["box-new"]["model_name"] == "qwen3-1.7b"


def test_a_mixture_of_experts_holds_every_expert_and_decodes_the_active_ones(served):
    server, env = served
    moe, _ = fit_json(env, "gpt-oss-20b", "--quant", "MXFP4_MOE")
    dense, _ = fit_json(env, "mistral-nemo-12b", "--quant", "Q4_0")
    m, d = moe["box-measured"], dense["box-measured"]
    assert m["memory_bytes"]["value"] > d["memory_bytes"]["value"]  # 21B parameters held ...
    assert m["decode_tokens_per_s"]["value"] > 2 * d["decode_tokens_per_s"]["value"]  # ... 3.6B read per token


def test_a_bad_file_or_a_forged_shape_is_one_line(served, tmp_path):
    server, env = served
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 64}))
    assert_one_line_error(run_cli("fleetfit", "fit", str(tmp_path / "config.json"), "--quant", "Q4_0", env=env),
                          "config.json lacks num_attention_heads (needed for a qwen3 shape)")
    forged = shapes.to_proto(CATALOGUE["qwen3-1.7b"])
    forged.name, forged.n_layers = "huge", 1 << 30
    with pytest.raises(grpc.RpcError) as err:
        fleet_stub(server).Fit(pb.FitRequest(model_name="huge", quant="Q4_0", shape=forged), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n_layers 1,073,741,824 is over the limit of 1,024" in err.value.details()
    forged.name, forged.n_layers = "qwen3-1.7b", 20  # a catalogue name on another shape
    with pytest.raises(grpc.RpcError, match="differs from the catalogued one"):
        fleet_stub(server).Fit(pb.FitRequest(model_name="qwen3-1.7b", quant="Q4_0", shape=forged), timeout=10)


def test_limits_predicts_rows_for_a_file_named_with_model(served, tmp_path):
    server, env = served
    config = json.loads((CONFIGS / "qwen3-1.7b.json").read_text()) | {"num_hidden_layers": 24}
    (tmp_path / "my-qwen").mkdir()
    (tmp_path / "my-qwen" / "config.json").write_text(json.dumps(config))
    gguf = synth.write_synthetic(tiny("tiny-qwen3", "qwen3", explicit_head_dim=128), "Q8_0", tmp_path / "tiny.gguf",
                                 free_disk_bytes=PLENTY, available_ram_bytes=PLENTY)
    rows = {}
    for table in ("speed", "memory"):
        done = run_cli("fleetfit", "limits", table, "--model", str(tmp_path / "my-qwen" / "config.json"),
                       "--model", str(gguf), "--format", "json", env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "qwen3, 1.52B parameters (as my-qwen)" in done.stderr  # read here; the coordinator gets the shape
        rows[table] = {(r["device"], r["model"]): r for r in json.loads(done.stdout)}
    speed = rows["speed"][("lab-box (box-measured)", "my-qwen")]
    memory = rows["memory"][("lab-box (box-measured)", "my-qwen")]
    assert speed["parameters"] == 1_500_000_000 and speed["q4_0_tok_s_provenance"] == "predicted"
    assert 0 < speed["q4_0_tok_s"] < 25.0  # slower than the measured tinyllama-1.1b Q4_0
    assert memory["q4_0_gb_provenance"] == "predicted" and 0.8 < memory["q4_0_gb"] < memory["f16_gb"]
    assert ("lab-box (box-measured)", "tiny") in rows["speed"]  # the GGUF's shape, named after its file
    plain = run_cli("fleetfit", "limits", "speed", "--format", "json", env=env, timeout=120)
    assert not any(r["model"] in ("my-qwen", "tiny") for r in json.loads(plain.stdout))  # only when asked
    assert_one_line_error(run_cli("fleetfit", "limits", "speed", "--model", "qwen9-1b", env=env), "unknown model")
    forged = shapes.to_proto(CATALOGUE["qwen3-1.7b"])
    forged.n_layers = 1  # a catalogued name on another shape
    with pytest.raises(grpc.RpcError) as refused:
        fleet_stub(server).GetTable(pb.GetTableRequest(name="speed", shapes=[forged]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs from the catalogued" in \
        refused.value.details()
