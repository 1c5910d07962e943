"""GPTQ on stock GGML block grids (quantcli/quants/gptq_ggml.py): bytes llama.cpp decodes to exactly the
values the algorithm propagated, and a smaller layer-output error than plain ggml quantization with the
same importance matrix.

The layer is tests/test_gptq.py's: a 256×512 weight with outliers, 16 × 128 correlated activations with
unequal channel scales and one dead channel.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from test_gptq import DEAD_COLUMN, hessian_of, layer_inputs, output_error

from quantcli.errors import InputInvalid, Unsupported
from quantcli.quants import dequantize, get, quantize
from quantcli.quants.gptq_ggml import gptq_ggml

# ‖(W − Ŵ)Xᵀ‖ of GPTQ over that of plain quantization with imatrix = diag(H)/2, measured on the layer
# below (docs/calibration.md); each bound is the measured ratio plus about 0.01.
ERROR_RATIO_BOUND = {
    T.Q4_0: 0.85,  # measured 0.8405
    T.Q4_1: 0.86,  # 0.8493
    T.Q5_0: 0.85,  # 0.8389
    T.Q5_1: 0.85,  # 0.8436
    T.Q8_0: 0.85,  # 0.8405
    T.Q2_K: 0.90,  # 0.8886
    T.Q3_K: 0.88,  # 0.8693
    T.Q4_K: 0.88,  # 0.8690
    T.Q5_K: 0.87,  # 0.8593
    T.Q6_K: 0.87,  # 0.8569
    T.IQ4_NL: 0.855,  # 0.8442
    T.IQ4_XS: 0.865,  # 0.8552
}
TYPES = list(ERROR_RATIO_BOUND)
K_QUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
LOOKUP_TABLES = [T.IQ4_NL, T.IQ4_XS]  # value = scale · kvalues_iq4nl[level]
SYMMETRIC = [T.Q4_0, T.Q5_0, T.Q8_0, T.Q3_K, T.Q6_K]  # no min: value = step · (level − zero)


@pytest.fixture(scope="module")
def layer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weight, inputs = layer_inputs()
    return weight, inputs, hessian_of(inputs)


@pytest.mark.slow
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_decode_to_the_values_propagated(ggml, layer, qtype: T) -> None:
    weight, _, hessian = layer
    result = gptq_ggml(weight, hessian, qtype)
    plain = quantize(weight, qtype)
    assert result.data.dtype == np.uint8 and result.data.shape == plain.shape
    used = result.values.view(np.uint32)
    ours = dequantize(result.data, qtype, weight.shape, use_native=False)
    np.testing.assert_array_equal(ours.view(np.uint32), used)
    theirs = ggml.dequantize(int(qtype), result.data, *weight.shape)
    np.testing.assert_array_equal(theirs.view(np.uint32), used)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_output_error_below_plain_quantization(layer, qtype: T) -> None:
    weight, inputs, hessian = layer
    result = gptq_ggml(weight, hessian, qtype)
    plain = quantize(weight, qtype, np.diag(hessian) / 2)
    ours = output_error(weight, result.values, inputs)
    baseline = output_error(weight, dequantize(plain, qtype, weight.shape), inputs)
    assert ours < ERROR_RATIO_BOUND[qtype] * baseline, (ours / baseline, qtype.name)
    if qtype in SYMMETRIC:
        # The dead input's weights are dropped (zeroed) before its block's parameters are chosen, and 0 is
        # a level of every symmetric grid.
        assert not result.values[:, DEAD_COLUMN].any()
        assert result.values[:, DEAD_COLUMN + 1].any()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_identity_hessian_is_nearest_rounding_on_the_quantizers_grid(layer, qtype: T) -> None:
    """No correlation, nothing to propagate: each value is the nearest on the grid ggml's quantizer chose."""
    weight, _, _ = layer
    hessian = 2.0 * np.eye(weight.shape[1])
    result = gptq_ggml(weight, hessian, qtype)
    plain = quantize(weight, qtype, np.diag(hessian) / 2)
    if qtype in K_QUANTS:
        # A GPTQ block is the whole super-block the quantizer saw: the same parameters and the same
        # nearest levels, byte for byte.
        assert np.array_equal(result.data, plain)
    elif qtype in LOOKUP_TABLES:
        # IQ4's parameter search sees only its own block (σ² per 32 or per 256), so the parameter bytes
        # are the quantizer's. ggml picks each index against the unrounded float scale, GPTQ the value
        # nearest among those the stored scale decodes to: never farther from the weight, element by element.
        assert np.array_equal(_parameter_bytes(result.data, qtype), _parameter_bytes(plain, qtype))
        ours = np.abs(weight - result.values)
        theirs = np.abs(weight - dequantize(plain, qtype, weight.shape))
        assert (ours <= theirs).all()
        assert not np.array_equal(result.data, plain)  # the rounding above does differ somewhere
    else:
        # The 32-blocks see their own columns, not the whole row (the `_impl` weights' sigma² differs), and
        # their levels round against the stored fp16 scale where ggml rounds against the unrounded one:
        # measured ratios 0.9986..0.9996.
        plain_error = np.linalg.norm(weight - dequantize(plain, qtype, weight.shape))
        assert np.linalg.norm(weight - result.values) <= plain_error


def _parameter_bytes(data: np.ndarray, qtype: T) -> np.ndarray:
    """The blocks with every level byte zeroed: what the type's parameters alone occupy."""
    cls = get(qtype)
    blocks = data.reshape(-1, cls.type_size).copy()
    cls.write_levels(blocks, np.zeros((blocks.shape[0], cls.block_size), dtype=np.int32))
    return blocks


@pytest.mark.parametrize("qtype", LOOKUP_TABLES, ids=lambda t: t.name)
def test_table_grid_takes_the_nearest_scaled_table_value(qtype: T) -> None:
    """On a non-uniform table the nearest level is not a rounded position: check it against every level's
    decoded value, with negative, zero and tiny scales, x exactly between two values and far outside."""
    cls = get(qtype)
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, (512, cls.type_size), dtype=np.uint8)
    scales = rng.standard_normal(512) * np.exp(rng.uniform(-20, 4, 512))
    scales[:8] = 0.0
    blocks[:, 0:2] = scales.astype("<f2").view(np.uint8).reshape(-1, 2)
    grid = cls.grid(blocks)
    every = np.stack([grid.values(np.full((512, cls.block_size), k)) for k in range(16)], axis=2)  # (nb, e, 16)
    keep = rng.integers(0, 16, 512).astype(np.int32)
    for element in (0, 31, cls.block_size - 1):
        candidates = every[:, element, :].astype(np.float64)
        dead = (candidates == 0).all(axis=1)  # scale 0: every level decodes to zero
        assert dead[:8].all() and not dead.all()
        a, b = candidates[:, 3], candidates[:, 4]
        for x in (rng.standard_normal(512) * np.abs(candidates).max(axis=1), (a + b) / 2, 1e3 * candidates[:, 0]):
            level = grid.nearest(x, element, keep)
            assert level.dtype == np.int32 and ((0 <= level) & (level <= 15)).all()
            chosen = candidates[np.arange(512), level]
            assert (np.abs(x - chosen) <= np.abs(x[:, None] - candidates).min(axis=1)).all()
            assert np.array_equal(level[dead], keep[dead])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_levels_and_write_levels_are_inverse_on_any_bytes(qtype: T) -> None:
    """Every bit of a block's level bytes is some level's: reading and writing back restores random blocks,
    and levels stay in the type's declared range."""
    cls = get(qtype)
    blocks = np.random.default_rng(int(qtype)).integers(0, 256, (64, cls.type_size), dtype=np.uint8)
    levels = cls.levels(blocks)
    assert levels.shape == (64, cls.block_size)
    assert cls.level_min <= levels.min() and levels.max() <= cls.level_max
    rewritten = np.zeros_like(blocks)
    cls.write_levels(rewritten, levels)
    restored = blocks.copy()
    cls.write_levels(restored, levels)
    assert np.array_equal(restored, blocks)
    assert np.array_equal(cls.levels(rewritten), levels)


def test_deterministic_and_the_same_without_the_c_extension(layer, monkeypatch) -> None:
    weight, _, hessian = layer
    for qtype in (T.Q4_0, T.Q4_K):
        first = gptq_ggml(weight, hessian, qtype).data
        assert np.array_equal(gptq_ggml(weight, hessian, qtype).data, first)
        monkeypatch.setenv("QUANTCLI_NATIVE", "0")
        assert np.array_equal(gptq_ggml(weight, hessian, qtype).data, first)
        monkeypatch.delenv("QUANTCLI_NATIVE")


def test_block_size_rounds_up_to_the_type_block(layer) -> None:
    """A lazy-update block of 96 columns would split Q4_K's 256-column blocks: it runs every 256."""
    weight, inputs, hessian = layer
    plain = dequantize(quantize(weight, T.Q4_K, np.diag(hessian) / 2), T.Q4_K, weight.shape)
    result = gptq_ggml(weight, hessian, T.Q4_K, block_size=96)
    assert np.array_equal(result.data, gptq_ggml(weight, hessian, T.Q4_K, block_size=256).data)
    assert output_error(weight, result.values, inputs) < output_error(weight, plain, inputs)


def test_refusals(layer) -> None:
    weight, _, hessian = layer
    bad = weight.copy()
    bad[3, 17] = np.nan
    with pytest.raises(InputInvalid, match="non-finite value at row 3, column 17"):
        gptq_ggml(bad, hessian, T.Q4_K, name="blk.0.ffn_up.weight")
    for qtype in (T.TQ1_0, T.TQ2_0, T.MXFP4, T.F16, T.BF16):
        get(qtype)  # a type quantcli writes, but without a LevelGrid GPTQ can round on
        with pytest.raises(Unsupported, match=f"GPTQ has no grid for tensor type {qtype.name}$"):
            gptq_ggml(weight, hessian, qtype)
    with pytest.raises(InputInvalid, match="row length 500 is not a multiple of Q4_0's block size 32") as exc:
        gptq_ggml(weight[:, :500], hessian[:500, :500], T.Q4_0)
    assert "\n" not in str(exc.value)
