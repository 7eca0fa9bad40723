"""What `fleetfit serve --install-listen` serves (coordinator/service/install_server.py) and keeps (coordinator/service/wheelhouse.py):
join.sh with this coordinator's addresses, a PEP 503 index of the wheelhouse, and the llama.cpp wheel per class of
device, uploaded once by an enrolled agent only; every request bounded. The whole one-line join runs in
tests/test_one_line_join.py."""

import io
import json
import ssl
import urllib.error
import urllib.request

import pytest

from fleetfit.agent import identity, llama_wheel
from fleetfit.coordinator.service import install_server, wheelhouse
from fleetfit.coordinator.harness import BackgroundCoordinator

WHEEL = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"


@pytest.fixture()
def served(tmp_path):
    coordinator = BackgroundCoordinator(tmp_path / "fleet.sqlite3", tls=True)
    coordinator.start()
    house = wheelhouse.Wheelhouse(tmp_path / "state" / "wheelhouse")
    house.packages.mkdir(parents=True)
    (house.packages / "Typing_Extensions-4.16.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (house.packages / "llama_cpp_python-0.3.36.tar.gz").write_bytes(b"sdist bytes")
    server = install_server.start("127.0.0.1:0", house, coordinator.store, coordinator.state_dir / "tls",
                                  coordinator.authority.server_chain_pem,
                                  lambda host: [f"{host.rpartition(':')[0]}:{coordinator.port}"])
    context = ssl.create_default_context(cadata=coordinator.authority.ca_pem.decode())
    context.check_hostname = False

    def call(path: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(f"https://127.0.0.1:{server.server_port}{path}", data=data, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    yield coordinator, house, call
    server.shutdown()
    coordinator.stop()


def test_join_sh_names_this_coordinator_and_the_index_lists_the_wheelhouse_with_digests(served):
    coordinator, house, call = served
    status, script = call("/join.sh")
    assert status == 200 and b"@INSTALL_URL@" not in script
    assert f'COORDINATORS="127.0.0.1:{coordinator.port}"'.encode() in script
    status, root = call("/simple/")
    assert b'href="/simple/typing-extensions/"' in root and b'href="/simple/llama-cpp-python/"' in root
    status, page = call("/simple/Typing.Extensions/")  # any spelling of the name: PEP 503's normalization
    digest = wheelhouse.sha256_of(house.packages / "Typing_Extensions-4.16.0-py3-none-any.whl")
    assert status == 200 and f"#sha256={digest}".encode() in page
    assert call("/files/Typing_Extensions-4.16.0-py3-none-any.whl") == (200, b"wheel bytes")
    assert call("/files/..%2Ffleet.sqlite3")[0] == 404  # nothing outside the wheelhouse
    assert call("/simple/numpy/")[0] == 404
    assert call("/" + "x" * 600)[0] == 414


def test_a_class_gets_only_its_own_wheel_uploaded_once_by_an_enrolled_agent(served):
    coordinator, house, call = served
    klass = "x86_64-cp311-cpu-0123456789ab"
    assert call(f"/llama/{klass}/")[0] == 404  # nothing held yet: the first device builds
    record = json.dumps({"build": "native", "cmake_args": "-DGGML_NATIVE=ON"})
    body = b"checked wheel"
    put = {"X-Fleetfit-Build": record, "Content-Length": str(len(body))}
    assert call(f"/llama/{klass}/{WHEEL}", "PUT", body, put)[0] == 401  # no credential
    assert call(f"/llama/{klass}/{WHEEL}", "PUT", body, {**put, "Authorization": "Bearer agent.x.wrong"})[0] == 401
    found = identity.join(coordinator.address, coordinator.join_token(), "dev-up")
    auth = {**put, "Authorization": f"Bearer {found.token}"}
    assert call(f"/llama/{klass}/not-a-wheel.txt", "PUT", body, auth)[0] == 400
    assert call(f"/llama/{klass}/{WHEEL}", "PUT", body, {**auth, "X-Fleetfit-Build": "[1]"})[0] == 400
    status, kept = call(f"/llama/{klass}/{WHEEL}", "PUT", body, auth)
    assert status == 201
    held = json.loads(call(f"/llama/{klass}/")[1])
    assert held == json.loads(kept) and held["wheel"] == WHEEL and held["build"]["uploaded_by"] == "dev-up"
    assert held["build"]["build"] == "native"
    assert call(f"/llama/{klass}/{WHEEL}") == (200, body)
    assert call(f"/llama/{klass}/{WHEEL}", "PUT", b"another", {**auth, "Content-Length": "7"})[0] == 409  # kept
    assert call(f"/llama/{klass}/{WHEEL}") == (200, body)
    assert call(f"/llama/x86_64-cp311-cpu-ffffffffffff/{WHEEL}")[0] == 404  # another class gets nothing
    assert [h["class"] for h in house.listing()["llama"]] == [klass]


def test_a_short_upload_keeps_nothing(tmp_path):
    house = wheelhouse.Wheelhouse(tmp_path)
    with pytest.raises(wheelhouse.WheelhouseError, match="short"):
        house.add_llama("x86_64-cp311-cpu-0", WHEEL, io.BytesIO(b"abc"), 10, {})
    assert house.llama("x86_64-cp311-cpu-0") is None and house.listing()["llama"] == []


def test_platform_tags_include_every_older_manylinux():
    tags = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux1_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert wheelhouse.platform_tags("manylinux2014_aarch64")[0] == "manylinux_2_17_aarch64"
    assert wheelhouse.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_the_device_class_is_architecture_python_cuda_and_the_cpu_features_ggml_uses(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("processor : 0\nflags : fpu sse3 avx2 fma f16c vmx\n"
                                           "processor : 1\nflags : fpu sse3 avx2 fma f16c vmx\n")
    assert llama_wheel.cpu_features((tmp_path / "proc/cpuinfo").read_text()) == ["avx2", "f16c", "fma", "sse3"]
    klass = llama_wheel.device_class(tmp_path)
    assert klass.endswith("-cpu-" + klass.rsplit("-", 1)[1]) and "-cp3" in klass
    (tmp_path / "proc/cpuinfo").write_text("flags : fpu sse3 avx2 fma f16c vmx aes\n")  # a flag ggml ignores
    assert llama_wheel.device_class(tmp_path) == klass
    (tmp_path / "proc/cpuinfo").write_text("flags : fpu sse3 avx2 fma f16c avx512f\n")  # one it uses
    assert llama_wheel.device_class(tmp_path) != klass
    assert llama_wheel.cpu_features("Features : fp asimd asimddp i8mm crc32\n") == ["asimd", "asimddp", "i8mm"]
