"""A device is its id everywhere a person or a tool reads it — through the real coordinator, CLI and report: devices
whose hostnames are chosen to read like an honest device's name never share its display name, every table names
each row's device id, the report files each device's series and rows under that device, and `fit --device` answers
for the device it names or says, in one line, which ids it could mean."""

import html
import json
import re

import pytest

from fleetfit.agent import identity
from fleetfit.coordinator.answers import tables
from fleetfit.coordinator.answers.render import clean
from fleetfit.coordinator.answers.tables import render_table
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from tests.conftest import Agents, assert_one_line_error, fleet_stub, run_cli

HONEST = "lab-gpu-1-7f3a9c21"
IMPOSTORS = {"imp-name": "lab-gpu-1 [site=lab]", "imp-id": HONEST, "imp-wide": "ＬＡＢ-gpu-1 [site=lab]",
             "imp-zw": "lab-gpu-1\u200b [site=lab]", "lab-gpu-1": "lab-gpu-1",
             # a Cyrillic letter, a character drawn as nothing, the honest device's short id and its qualified name
             "imp-cyr": "l\u0430b-gpu-1 [site=lab]", "imp-fill": "lab-gpu-1\u3164 [site=lab]", "imp-short": "7f3a9c21",
             "imp-qual": "lab-gpu-1 (7f3a9c21) [site=lab]"}  # device id -> chosen hostname


@pytest.fixture()
def fleet(coordinator):
    agents = Agents(coordinator)
    joined = identity.join(coordinator.address, coordinator.join_token(labels={"site": "lab"}), HONEST, insecure=True)
    agents.channels.append(joined.connect(5))
    agents.stubs[HONEST] = pb_grpc.AgentServiceStub(agents.channels[-1])
    for i, (device_id, hostname) in enumerate({HONEST: "lab-gpu-1", **IMPOSTORS}.items()):
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(
            device_id=device_id, hostname=hostname, arch="x86_64", ram_total_bytes=8 << 30)), timeout=5)
        for params, quant in ((134_515_008, "Q4_0"), (361_821_120, "Q4_0"), (134_515_008, "Q8_0")):
            decode = 50.0 + 10 * i  # each device its own figures
            agents.ReportResult(pb.ReportResultRequest(result=pb.ProfileResult(
                result_id=f"{device_id}-{params}-{quant}", device_id=device_id,
                model_name="smollm2-135m" if params < 2e8 else "smollm2-360m", quant=quant,
                request=pb.ProfileRequest(backend="llama.cpp", quant=quant), model_n_params=params, n_prompt=512,
                n_gen=128, threads=2, decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]),
                prefill_tokens_per_s=pb.Stat(mean=10 * decode, samples=[10 * decode]),
                peak_rss_bytes=params)), timeout=5)
    agents.close()
    env = {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": coordinator.address}
    listed = run_cli("fleetfit", "devices", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    names = {d["device_id"]: d["name"] for d in json.loads(listed.stdout)}
    assert sorted(names) == sorted([HONEST, *IMPOSTORS])
    yield env, names


def test_no_device_shares_a_display_name_and_every_table_names_each_rows_device_id(fleet, coordinator):
    env, names = fleet
    assert len(set(names.values())) == len(names), names
    assert all(name == device_id or name not in names for device_id, name in names.items()), names  # nor an id
    ids = {name: device_id for device_id, name in names.items()}
    stub, checked = fleet_stub(coordinator), 0
    for name in tables.TABLES:
        table = stub.GetTable(pb.GetTableRequest(name=name), timeout=60).table
        if "device" not in table.columns:
            continue
        assert "device id" in table.columns, name
        device, device_id = list(table.columns).index("device"), list(table.columns).index("device id")
        for row in table.rows:
            shown, key = (tables.typed_cell(row.cells[i]) for i in (device, device_id))
            if shown is not None:
                assert ids[shown] == key, (name, shown, key)
                checked += 1
        for fmt in ("csv", "json", "jsonl", "sql") if table.rows else ():
            assert "device_id" in render_table(table, fmt), (name, fmt)
    assert checked >= 3 * len(names)


def test_fit_device_takes_an_id_or_a_display_name_and_refuses_an_ambiguous_one(fleet):
    env, names = fleet
    for device_id, name in names.items():
        for key in (device_id, name):
            done = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--device", key, "--format", "json",
                           env=env)
            assert done.returncode == 0, done.stderr
            assert [a["device_id"] for a in json.loads(done.stdout)] == [device_id], key
    # the honest device's name before the others came: several devices could be meant, so none is chosen
    stale = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--device", "lab-gpu-1 [site=lab]", env=env)
    assert_one_line_error(stale, HONEST)
    assert "imp-name" in stale.stderr


def test_the_report_files_each_devices_series_and_rows_under_that_device(fleet, tmp_path):
    env, names = fleet
    names = {device_id: clean(name) for device_id, name in names.items()}  # as the page shows them
    done = run_cli("fleetfit", "report", "--out", str(tmp_path / "r"), env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    by_index = {int(i): html.unescape(n) for i, n in re.findall(r'<label for="dev-(\d+)">(.*?)</label>', page)}
    assert sorted(by_index.values()) == sorted(names.values())
    id_of = {i: device_id for i, n in by_index.items() for device_id, name in names.items() if name == n}
    series = re.findall(r'<g class="series" data-device="(-?\d+)" data-series="(.*?)">', page)
    assert len({i for i, _ in series}) == len(names)  # every device its own series
    for i, label in series:
        assert html.unescape(label).startswith(by_index[int(i)] + " "), (i, label)
    rows = re.findall(r'<tr data-device="(\d+)">(.*?)</tr>', page)
    assert rows
    for i, row in rows:  # tagged with the device its device id column names, shown by that device's name
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
        assert by_index[int(i)] in cells and cells[-1] == id_of[int(i)], (i, cells)
