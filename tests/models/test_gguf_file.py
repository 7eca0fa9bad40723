import pytest

from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf


def test_inspects_the_real_model(ladder):
    info = inspect_gguf(ladder["Q4_1"])
    assert info.architecture == "llama"
    assert info.quant == "Q4_1"
    assert 130e6 < info.n_params < 140e6  # SmolLM2-135M
    assert info.file_bytes == ladder["Q4_1"].stat().st_size


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_0"])
def test_derived_files_have_the_asked_type(ladder, quant):
    assert inspect_gguf(ladder[quant]).quant == quant


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        inspect_gguf(tmp_path / "absent.gguf")


def test_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelError, match="not a GGUF file"):
        inspect_gguf(path)


@pytest.mark.parametrize("keep_bytes", [1000, 50_000_000])
def test_truncated(tmp_path, ladder, keep_bytes):
    path = tmp_path / "cut.gguf"
    with ladder["Q4_1"].open("rb") as src:
        path.write_bytes(src.read(keep_bytes))
    with pytest.raises(ModelError, match="truncated"):
        inspect_gguf(path)
