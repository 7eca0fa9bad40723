"""Job parameters are bounded at submit (models/job_bounds.py, the numbers the agent enforces too): SubmitProfile
and CreateCampaign refuse what is out of bounds with one-line INVALID_ARGUMENT, on the real server."""

import grpc
import pytest

from fleetfit.models import job_bounds
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, fleet_stub


def request(**fields) -> pb.ProfileRequest:
    base = dict(model=pb.ModelRef(name="smollm2-135m"), backend="llama.cpp", quant="Q4_0", n_prompt=16, n_gen=4,
                repetitions=1)
    return pb.ProfileRequest(**{**base, **fields})


BAD = [
    (dict(idle_baseline_s=1e9), "idle_baseline_s must be at most 600"),
    (dict(idle_baseline_s=float("nan")), "idle_baseline_s must be a finite number"),
    (dict(timeout_s=float("nan")), "timeout_s must be a finite number"),
    (dict(timeout_s=float("inf")), "timeout_s must be a finite number"),
    (dict(timeout_s=-1.0), "timeout_s must be at least 0"),
    (dict(n_prompt=2**31 - 1), "n_prompt must be at most 65536"),
    (dict(n_gen=0), "n_gen must be at least 1"),
    (dict(repetitions=101), "repetitions must be at most 100"),
    (dict(threads=1_000_000), "threads must be at most 1024"),
    (dict(threads=-1), "threads must be at least 0"),
    (dict(device="cuda;reboot"), "device 'cuda;reboot' must be one of"),
    (dict(gpu_layers=-1), "gpu_layers must be at least 0"),
    (dict(gpu_layers=2**31 - 1), "gpu_layers must be at most 10000"),
    (dict(model=pb.ModelRef(name="../../etc/passwd")), "is not a model name"),
    (dict(model=pb.ModelRef(name="/home/owner/secret.gguf")), "is not a model name"),
    (dict(model=pb.ModelRef(name=".hidden")), "is not a model name"),
    (dict(model=pb.ModelRef(path="/etc/shadow")), "model.path is refused"),
    (dict(parallel=[1, 0]), "parallel values must be 1..256 sequences, got 0"),
    (dict(parallel=[-4]), "parallel values must be 1..256 sequences, got -4"),
    (dict(parallel=[2**31 - 1]), "parallel values must be 1..256 sequences"),
    (dict(parallel=list(range(1, 18))), "parallel lists 17 values: at most 16"),
    (dict(parallel=[4, 2, 4]), "parallel lists 4 more than once"),
    (dict(parallel=[256], n_prompt=65536), "parallel 256 x (n_prompt 65536 + n_gen 4) = 16778240 tokens"),
    (dict(model=pb.ModelRef(name="smollm2-135m", path="/etc/shadow")), "model.path is refused"),
    (dict(decode_depth=-1), "decode_depth must be at least 0"),
    (dict(decode_depth=2**31 - 1), "decode_depth must be at most 131072"),
    (dict(decode_depth=131072), "decode depth 131072 + n_prompt 16 + n_gen 4 = 131092 tokens of context: at most 131072"),
    (dict(decode_depth=512, backend="torch", quant="fp16"), "decode depth is run by llama.cpp only, not torch"),
]


@pytest.fixture()
def fleet(coordinator):
    agents = Agents(coordinator)
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-1", hostname="pi")), timeout=5)
    yield fleet_stub(coordinator)
    agents.close()


@pytest.mark.parametrize("fields, fragment", BAD)
def test_submit_refuses_out_of_bounds_jobs_with_one_line(fleet, fields, fragment):
    with pytest.raises(grpc.RpcError) as err:
        fleet.SubmitProfile(pb.SubmitProfileRequest(request=request(**fields)), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details() and "\n" not in err.value.details()


@pytest.mark.parametrize("fields, fragment", [b for b in BAD if "model" not in b[0]])
def test_create_campaign_refuses_out_of_bounds_templates(fleet, fields, fragment):
    template = request(**fields)
    template.ClearField("model")
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"], template=template)
    with pytest.raises(grpc.RpcError) as err:
        fleet.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()


@pytest.mark.parametrize("models, fragment", [(["../x"], "is not a model name"), (["a" * 200], "is not a model name")])
def test_create_campaign_refuses_model_names_that_are_not_names(fleet, models, fragment):
    spec = pb.CampaignSpec(models=models, quants=["Q4_0"], backends=["llama.cpp"],
                           template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))
    with pytest.raises(grpc.RpcError) as err:
        fleet.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=5)
    assert fragment in err.value.details() and len(err.value.details()) < 300


def test_jobs_at_the_bounds_are_queued(fleet):
    edge = request(n_prompt=65536, n_gen=1, repetitions=100, threads=1024, timeout_s=86400, idle_baseline_s=600,
                   device="cuda:7")
    assert len(fleet.SubmitProfile(pb.SubmitProfileRequest(request=edge), timeout=5).job_ids) == 1
    job_bounds.check_job(edge)  # the agent's check agrees
    sweep = request(n_prompt=1000, n_gen=24, parallel=list(range(241, 257)))  # 16 points, 256 x 1024 tokens
    assert len(fleet.SubmitProfile(pb.SubmitProfileRequest(request=sweep), timeout=5).job_ids) == 1
    job_bounds.check_job(sweep)


def test_a_submitted_sweep_reaches_the_agent_unchanged(coordinator):
    agents = Agents(coordinator)
    try:
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-1", hostname="pi")), timeout=5)
        fleet_stub(coordinator).SubmitProfile(pb.SubmitProfileRequest(request=request(parallel=[8, 1, 4])), timeout=5)
        job = agents.PollJob(pb.PollJobRequest(device_id="dev-1"), timeout=15).job
        assert list(job.request.parallel) == [8, 1, 4]
    finally:
        agents.close()
