"""Campaigns naming a file's shape: `fleetfit profile --models ./config.json` reads the file here and sends its
shape; two real agents sharing a hostname synthesize it and profile it with llama.cpp over real gRPC. The shape
is checked on the coordinator and again on the agent."""

import json
import re
import subprocess
import time

import grpc
import pytest

from fleetfit.agent.backends import registry
from fleetfit.agent.backends.base import ProfileInputError
from fleetfit.models import shapes
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, assert_one_line_error, fleet_stub, run_cli

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 2048, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "my-tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture()
def twins(coordinator, tmp_path):
    """Two agent processes on this machine: one hostname, two device ids, each with its own cache."""
    procs = [subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address,
                               "--device-id", device_id, "--cache-dir", str(tmp_path / f"cache-{device_id}"),
                               "--insecure", "--token", coordinator.join_token(),
                               "--identity", str(tmp_path / f"{device_id}.json"), "--allow-dir", "/nonexistent"],
                              stderr=subprocess.DEVNULL) for device_id in ("twin-a", "twin-b")]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_a_campaign_profiles_a_config_json_on_two_agents_sharing_a_hostname(coordinator, twins, config):
    env = {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": coordinator.address}
    fleet = fleet_stub(coordinator)
    deadline = time.monotonic() + 120
    while len(fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in twins)
        time.sleep(0.3)
    devices = fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices
    assert len({d.inventory.hostname for d in devices}) == 1  # the same machine: one hostname, two devices

    done = run_cli("fleetfit", "profile", "--models", str(config), "--quants", "Q4_0", "--n-prompt", "16",
                   "--n-gen", "4", "--repetitions", "1", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "llama, 0.00B parameters (as my-tiny)" in done.stderr
    campaign_id = re.search(r"campaign (\S+): 2 jobs on 2 device", done.stdout)[1]
    deadline = time.monotonic() + 300
    while (c := fleet.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign_id), timeout=5).campaign).queued \
            or c.running:
        assert time.monotonic() < deadline and all(p.poll() is None for p in twins)
        time.sleep(0.5)
    assert (c.done, c.failed) == (2, 0), [e for d in c.devices for e in d.errors]
    assert list(c.spec.models) == ["my-tiny"] and c.spec.shapes[0].n_layers == 2  # the shape, never the path

    rows = [r for r in fleet.GetLimitTable(pb.GetLimitTableRequest(), timeout=10).rows if r.model_name == "my-tiny"]
    assert sorted(r.device_id for r in rows) == ["twin-a", "twin-b"]
    assert all(r.quant == "Q4_0" and r.decode_tokens_per_s.mean > 0 for r in rows)

    # the coordinator refuses a shape out of bounds, or one for no model of the campaign, in one line
    bad = shapes.to_proto(shapes.architecture_of(str(config)))
    bad.n_layers = 0
    small = pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1)
    for spec, fragment in ((pb.CampaignSpec(models=["my-tiny"], quants=["Q4_0"], backends=["llama.cpp"],
                                            shapes=[bad], template=small), "shape 'my-tiny'"),
                           (pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"],
                                            shapes=[shapes.to_proto(shapes.architecture_of(str(config)))],
                                            template=small),
                            "is for no model of the campaign")):
        with pytest.raises(grpc.RpcError) as refused:
            fleet.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in refused.value.details()
        assert "\n" not in refused.value.details()
    assert_one_line_error(run_cli("fleetfit", "profile", "--models", str(config.parent / "missing.json"), env=env),
                          "missing.json")


def test_the_agent_checks_a_sent_shape_again(config):
    backend = registry.get("llama.cpp")
    good = shapes.to_proto(shapes.architecture_of(str(config)))
    assert backend.sent_shape(pb.ModelRef(name="my-tiny", shape=good)).n_layers == 2
    huge = pb.Architecture()
    huge.CopyFrom(good)
    huge.hidden = 1 << 30
    with pytest.raises(Exception) as exc:  # bounded like any catalogue entry: a ModelError, one line
        backend.sent_shape(pb.ModelRef(name="my-tiny", shape=huge))
    assert "\n" not in str(exc.value) and "hidden" in str(exc.value)
    with pytest.raises(ProfileInputError, match="does not match"):
        backend.sent_shape(pb.ModelRef(name="smollm2-135m", shape=good))
    with pytest.raises(ProfileInputError, match="catalogue shapes only"):
        registry.get("torch").sent_shape(pb.ModelRef(name="my-tiny", shape=good))
