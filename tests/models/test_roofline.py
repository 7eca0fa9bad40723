import pytest
from gguf import GGUFReader

from fleetfit.models import roofline as rl

SMOLLM2 = rl.ModelShape("llama", n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
                        weight_bytes_per_token=269_100_288, matmul_params_per_token=134_479_872)


def test_kv_cache_counts_kv_heads_not_query_heads():
    # 2 (K and V) x 30 layers x 3 KV heads x 64 x 100 positions x 2 bytes: 3x less than with 9 query heads
    assert rl.kv_cache_bytes(SMOLLM2, 100) == 2 * 30 * 3 * 64 * 100 * 2


def test_shape_comes_from_the_gguf_metadata(ladder):
    shape = rl.model_shape(ladder["F16"])
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (30, 9, 3, 64)
    # SmolLM2 ties its output projection to the embedding table: every tensor is read per token.
    tensors = GGUFReader(ladder["F16"]).tensors
    assert shape.weight_bytes_per_token == sum(int(t.n_bytes) for t in tensors)
    assert rl.model_shape(ladder["Q4_0"]).weight_bytes_per_token < 0.4 * shape.weight_bytes_per_token


def test_decode_is_memory_bound_below_the_ridge_and_compute_bound_above():
    point = rl.roofline(SMOLLM2, context_tokens=64, decode_tokens_per_s=100, bandwidth_gb_per_s=30,
                        peak_gflop_per_s=150)
    assert point.achieved_gb_per_s == pytest.approx(point.bytes_per_token * 100 / 1e9)
    assert point.percent_of_bandwidth == pytest.approx(100 * point.achieved_gb_per_s / 30)
    assert point.arithmetic_intensity == pytest.approx(1.0, abs=0.05)  # 2 FLOPs per 2-byte weight
    assert (point.ridge_flop_per_byte, point.bottleneck) == (5, "memory")
    assert rl.roofline(SMOLLM2, 64, 100, 30, peak_gflop_per_s=15).bottleneck == "compute"


def test_without_a_measured_device_the_comparisons_are_none_not_zero():
    point = rl.roofline(SMOLLM2, 64, decode_tokens_per_s=100, bandwidth_gb_per_s=None, peak_gflop_per_s=None)
    assert point.achieved_gb_per_s > 0
    assert (point.percent_of_bandwidth, point.ridge_flop_per_byte, point.bottleneck) == (None, None, None)
