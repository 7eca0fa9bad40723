"""Campaigns (coordinator/service/campaigns.py): parsing device selectors, matching them against real-looking
inventories and labels, expanding a spec into per-device jobs, checking specs, and summing progress."""

import pytest

from fleetfit.coordinator.service.campaigns import SelectorError, Term, check_spec, expand, matches, parse_selector, progress
from fleetfit.coordinator.service.store import Campaign
from fleetfit.v1 import fleetfit_pb2 as pb

GB, GiB = 10**9, 2**30


def inventory(device_id="pi-1", arch="aarch64", os="Linux", hostname="pi-kitchen",
              cpu_model="Cortex-A76", cores=4, ram=8 * GB, gpu_mem=(), backends=()) -> pb.DeviceInventory:
    return pb.DeviceInventory(
        device_id=device_id, arch=arch, os=os, hostname=hostname, cpu_model=cpu_model, cpu_cores_physical=cores,
        ram_total_bytes=ram, gpus=[pb.GpuInfo(index=i, memory_total_bytes=m) for i, m in enumerate(gpu_mem)],
        backends=list(backends))


PI = inventory()
WORKSTATION = inventory(device_id="ws-1", arch="x86_64", hostname="ws-lab", cpu_model="AMD Ryzen 9 7950X",
                        cores=16, ram=64 * GiB, gpu_mem=(24 * GiB, 12 * GiB))


def selects(selector: str, inv: pb.DeviceInventory, labels: dict[str, str] | None = None) -> bool:
    return matches(parse_selector(selector), inv, labels or {})


# -- parse_selector

@pytest.mark.parametrize("text, term", [
    ("arch=aarch64", Term("arch", "=", "aarch64")),
    ("os != Linux", Term("os", "!=", "Linux")),
    ("hostname=ws-lab", Term("hostname", "=", "ws-lab")),
    ("device=pi-1", Term("device", "=", "pi-1")),
    ("cpu=Ryzen", Term("cpu", "=", "Ryzen")),
    ("cores>=8", Term("cores", ">=", 8.0)),
    ("gpus<2", Term("gpus", "<", 2.0)),
    ("ram>=8GB", Term("ram", ">=", 8e9)),
    ("ram<=16GiB", Term("ram", "<=", 16 * 2**30)),
    ("gpu_mem>512MB", Term("gpu_mem", ">", 512e6)),
    ("gpu_mem>=1.5gib", Term("gpu_mem", ">=", 1.5 * 2**30)),
    ("label=lab", Term("label", "=", "lab")),
    ("label.site=lab", Term("label.site", "=", "lab")),
])
def test_parse_selector_reads_each_key_kind(text, term):
    assert parse_selector(text) == [term]


def test_parse_selector_reads_several_terms_and_ignores_empty_ones():
    assert parse_selector(" arch=x86_64, ,ram>=8GB,") == [Term("arch", "=", "x86_64"), Term("ram", ">=", 8e9)]
    assert parse_selector("") == []


@pytest.mark.parametrize("text, fragment", [
    ("colour=red", "unknown selector key 'colour'"),
    ("arch>=x86", "arch is text"),
    ("ram>=8", "ram needs a size with a unit"),
    ("gpu_mem>=8parsecs", "gpu_mem needs a size with a unit"),
    ("cores>=many", "cores needs a number, got 'many'"),
    ("cores>=nan", "cores needs a number, got 'nan'"),
    ("gpus<inf", "gpus needs a number, got 'inf'"),
    ("ram>=1.2.3GB", "ram needs a size with a unit"),
    ("ram8GB", "bad selector term 'ram8GB'"),
    ("label.site>=lab", "label.site is text"),
    ("arch.sub=x86", "unknown selector key 'arch.sub'"),
    ("ram.max>=8GB", "unknown selector key 'ram.max'"),
])
def test_parse_selector_errors_name_the_term(text, fragment):
    with pytest.raises(SelectorError) as err:
        parse_selector(f"os=Linux,{text}")
    assert fragment in str(err.value)


# -- matches

def test_text_equality_and_inequality():
    assert selects("arch=aarch64", PI)
    assert not selects("arch=aarch64", WORKSTATION)
    assert selects("arch!=aarch64", WORKSTATION)
    assert selects("hostname=pi-kitchen", PI)
    assert selects("device=ws-1", WORKSTATION)
    assert not selects("device=ws-1", PI)
    assert selects("os=Linux", PI)


def test_ram_and_gpu_memory_comparisons():
    assert selects("ram>=8GB", PI)
    assert not selects("ram>8GB", PI)
    assert not selects("ram>=8GiB", PI)
    assert selects("ram<8GiB", PI)
    assert selects("gpu_mem>=24GiB", WORKSTATION)
    assert not selects("gpu_mem>24GiB", WORKSTATION)
    assert not selects("gpu_mem>=1MB", PI)


def test_gpu_count_and_cores():
    assert selects("gpus=2", WORKSTATION)
    assert selects("gpus=0", PI)
    assert not selects("gpus>=1", PI)
    assert selects("cores>=16", WORKSTATION)
    assert not selects("cores>=16", PI)


def test_cpu_matches_a_substring_ignoring_case():
    assert selects("cpu=ryzen 9", WORKSTATION)
    assert not selects("cpu=ryzen", PI)
    assert selects("cpu!=ryzen", PI)


def test_labels_by_value_by_key_and_by_key_value():
    labels = {"site": "lab", "rack": "r2"}
    assert selects("label=lab", PI, labels)
    assert selects("label=site", PI, labels)
    assert not selects("label=home", PI, labels)
    assert selects("label!=home", PI, labels)
    assert selects("label.site=lab", PI, labels)
    assert not selects("label.site=r2", PI, labels)
    assert not selects("label.site=lab", PI, {"rack": "lab"})
    assert not selects("label=lab", PI, {})


def test_terms_are_anded():
    assert selects("arch=x86_64,ram>=32GB,gpus>=1,label=lab", WORKSTATION, {"site": "lab"})
    assert not selects("arch=x86_64,ram>=32GB,gpus>=1,label=lab", WORKSTATION, {"site": "home"})
    assert not selects("arch=x86_64,ram>=128GB", WORKSTATION)


def test_empty_selector_matches_every_device():
    assert selects("", PI)
    assert selects("", WORKSTATION)
    assert selects("", pb.DeviceInventory())


# -- expand

def spec(models=("smollm2-135m",), quants=("Q4_0",), backends=("llama.cpp",), **template) -> pb.CampaignSpec:
    fields = dict(n_prompt=64, n_gen=16, repetitions=2) | template
    return pb.CampaignSpec(models=list(models), quants=list(quants), backends=list(backends),
                           template=pb.ProfileRequest(**fields))


ALL_BACKENDS = [pb.BackendInfo(name=n, available=True, version="1") for n in ("llama.cpp", "torch", "onnxruntime")]


def test_expand_makes_one_job_per_runnable_backend_model_and_precision_for_matching_devices_only():
    ws = pb.DeviceInventory(); ws.CopyFrom(WORKSTATION); ws.backends.extend(ALL_BACKENDS)
    pi = pb.DeviceInventory(); pi.CopyFrom(PI); pi.backends.extend(ALL_BACKENDS)
    devices = [pb.Device(inventory=pi), pb.Device(inventory=ws)]
    campaign = spec(models=("smollm2-135m", "tinyllama-1.1b"), quants=("q4_0", "Q8_0", "INT8"),
                    backends=("llama.cpp", "torch"), threads=3, timeout_s=120.0, parallel=[1, 4, 8])

    plan = expand(campaign, parse_selector("arch=x86_64"), devices)

    assert plan.matched == ["ws-1"]
    assert {device for device, _ in plan.jobs} == {"ws-1"}
    # each backend gets only its own precisions, spelled canonically: GGUF types for llama.cpp, int8 for torch
    assert {(r.backend, r.model.name, r.quant) for _, r in plan.jobs} == {
        *(("llama.cpp", m, q) for m in ("smollm2-135m", "tinyllama-1.1b") for q in ("Q4_0", "Q8_0")),
        *(("torch", m, "int8") for m in ("smollm2-135m", "tinyllama-1.1b"))}
    reasons = plan.skipped["ws-1"]
    # llama.cpp x INT8, torch x Q4_0 and Q8_0, for both models: one line per reason, naming its combinations
    assert reasons == ["llama.cpp smollm2-135m INT8, llama.cpp tinyllama-1.1b INT8: llama.cpp does not take "
                       "precision 'INT8'",
                       "torch smollm2-135m q4_0, torch tinyllama-1.1b q4_0: torch does not take precision 'q4_0'",
                       "torch smollm2-135m Q8_0, torch tinyllama-1.1b Q8_0: torch does not take precision 'Q8_0'"]
    for _, request in plan.jobs:
        assert (request.n_prompt, request.n_gen, request.repetitions, request.threads, request.timeout_s) == (
            64, 16, 2, 3, 120.0)
        assert request.model.path == "" and list(request.parallel) == [1, 4, 8]


def test_expand_matches_labels_per_device():
    devices = [pb.Device(inventory=PI, labels={"site": "lab"}), pb.Device(inventory=WORKSTATION)]
    plan = expand(spec(), parse_selector("label.site=lab"), devices)
    assert plan.matched == ["pi-1"]
    assert list(plan.skipped) == ["pi-1"]  # it reported no backends: nothing is queued to fail there


def test_expand_skips_a_backend_the_device_reports_unavailable():
    pi = inventory(backends=[pb.BackendInfo(name="llama.cpp", available=True, version="b4000"),
                             pb.BackendInfo(name="torch", available=False, reason="torch is not installed")])
    plan = expand(spec(backends=("llama.cpp", "torch"), quants=("Q4_0", "int8")), [], [pb.Device(inventory=pi)])

    assert plan.matched == ["pi-1"]
    assert [(d, r.backend, r.quant) for d, r in plan.jobs] == [("pi-1", "llama.cpp", "Q4_0")]
    torch_reasons = [r for r in plan.skipped["pi-1"] if r.startswith("torch smollm2-135m int8")]
    assert len(torch_reasons) == 1 and "torch is not installed" in torch_reasons[0]


def test_expand_skips_what_the_device_cannot_obtain_or_run():
    torch = pb.BackendInfo(name="torch", available=True, version="2", capabilities=[
        pb.BackendCapability(device="cpu", precision="int8", supported=True),
        pb.BackendCapability(device="cpu", precision="fp16", supported=False, reason="fp16 runs on CUDA only")])
    onnx = pb.BackendInfo(name="onnxruntime", available=True, version="1", models=["smollm2-135m"])
    board = inventory(backends=[torch, onnx])
    plan = expand(spec(models=("smollm2-135m", "distilgpt2"), quants=("int8", "fp16"),
                       backends=("torch", "onnxruntime")), [], [pb.Device(inventory=board)])

    assert sorted((r.backend, r.model.name, r.quant) for _, r in plan.jobs) == [
        ("onnxruntime", "smollm2-135m", "int8"),
        ("torch", "smollm2-135m", "int8")]
    reasons = "\n".join(plan.skipped["pi-1"])
    assert "torch smollm2-135m fp16: torch cannot run fp16 on cpu: fp16 runs on CUDA only" in reasons
    assert "torch distilgpt2 int8, torch distilgpt2 fp16: torch runs llama/qwen2 shapes; distilgpt2 is gpt2" in reasons
    assert "onnxruntime distilgpt2 int8: onnxruntime runs real models only" in reasons
    assert "onnxruntime smollm2-135m fp16, onnxruntime distilgpt2 fp16: onnxruntime does not take precision " \
           "'fp16'" in reasons


def test_expand_with_no_matching_device_makes_nothing():
    plan = expand(spec(), parse_selector("gpus>=4"), [pb.Device(inventory=WORKSTATION)])
    assert (plan.jobs, plan.matched, plan.skipped) == ([], [], {})


# -- check_spec

def test_check_spec_accepts_a_complete_spec():
    check_spec(spec(models=("smollm2-135m", "llama-2-7b"), quants=("Q4_0", "f16")))


@pytest.mark.parametrize("bad, fragment", [
    (spec(models=()), "at least one model"),
    (spec(quants=()), "one quant"),
    (spec(backends=()), "one backend"),
    (spec(models=("gpt-17",)), "unknown model 'gpt-17'"),
    (spec(quants=("Q4_9",)), "precision 'Q4_9' is not one that llama.cpp take"),
    (spec(backends=("llama.cpp", "mlx")), "unknown backend 'mlx'"),
    (spec(models=("distilgpt2",), backends=("onnxruntime",)), "onnxruntime runs real models only"),
    (spec(n_gen=0), "n_gen must be at least 1"),
    (spec(n_prompt=0), "n_prompt must be at least 1"),
    (spec(repetitions=-1), "repetitions must be at least 1"),
])
def test_check_spec_refuses_with_one_line(bad, fragment):
    with pytest.raises(ValueError) as err:
        check_spec(bad)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


# -- progress

def test_progress_counts_per_state_and_per_device_with_failures_listed():
    campaign = spec()
    jobs = [
        pb.JobStatus(job_id="j1", device_id="ws-1", job_state=pb.JOB_STATE_DONE),
        pb.JobStatus(job_id="j2", device_id="ws-1", job_state=pb.JOB_STATE_FAILED, error="out of memory"),
        pb.JobStatus(job_id="j3", device_id="pi-1", job_state=pb.JOB_STATE_RUNNING),
        pb.JobStatus(job_id="j4", device_id="pi-1", job_state=pb.JOB_STATE_QUEUED),
        pb.JobStatus(job_id="j5", device_id="pi-1", job_state=pb.JOB_STATE_FAILED, error="model not in cache"),
        pb.JobStatus(job_id="j6", device_id="pi-1", job_state=pb.JOB_STATE_FAILED),
        pb.JobStatus(job_id="j7", device_id="ws-1", job_state=pb.JOB_STATE_DONE, error="ignored: not failed"),
    ]

    status = progress(Campaign("c-1", "arch=x86_64", 1700000000.0, campaign, {"pi-9": ["torch m int8: why"]}), jobs)

    assert (status.campaign_id, status.selector, status.created_unix_s) == ("c-1", "arch=x86_64", 1700000000.0)
    assert status.spec == campaign
    assert (status.done, status.running, status.failed, status.queued) == (2, 1, 3, 1)
    assert [d.device_id for d in status.devices] == ["pi-1", "pi-9", "ws-1"]
    pi, pi9, ws = status.devices
    assert list(pi9.skipped) == ["torch m int8: why"] and (pi9.done, pi9.queued) == (0, 0)
    assert (pi.done, pi.running, pi.failed, pi.queued) == (0, 1, 2, 1)
    assert (ws.done, ws.running, ws.failed, ws.queued) == (2, 0, 1, 0)
    assert list(pi.errors) == ["model not in cache"]
    assert list(ws.errors) == ["out of memory"]


def test_progress_of_an_unknown_state_counts_it_as_queued():
    status = progress(Campaign("c-1", "", 0.0, spec(), {}), [pb.JobStatus(device_id="pi-1", job_state=99)])
    assert status.queued == 1
    assert status.devices[0].queued == 1


def test_progress_with_no_jobs_is_all_zero():
    status = progress(Campaign("c-1", "", 0.0, spec(), {}), [])
    assert (status.done, status.running, status.failed, status.queued) == (0, 0, 0, 0)
    assert list(status.devices) == []
