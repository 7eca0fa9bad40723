import pytest

from fleetfit.models.errors import ModelError
from fleetfit.models.quants import llama_ftype, parse_quant, quant_of_ftype


def test_canonical_names_and_llama_ftypes():
    assert parse_quant("q4_k_m") == "Q4_K_M"
    # Values of llama.cpp's enum llama_ftype, as the quantizer takes them.
    assert (llama_ftype("F32"), llama_ftype("F16"), llama_ftype("Q4_0"), llama_ftype("Q4_1"), llama_ftype("Q8_0")) == (
        0, 1, 2, 3, 7)
    assert quant_of_ftype(7) == "Q8_0"


def test_unknown_quant_suggests_near_names():
    with pytest.raises(ModelError, match=r"unknown quant type 'Q4_M' \(did you mean Q4_K_M"):
        parse_quant("Q4_M")
