"""Q8_0 (32-blocks, fp16 scale, int8 quants) = quantize_row_q8_0_ref; ggml ignores the imatrix."""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    F32,
    GridQuantType,
    LevelGrid,
    half_bytes,
    read_half,
    transposed_blocks,
    zero_codes_where_inverse_overflows,
)

# 0.5 - 2^-25, the largest float32 below 0.5
_JUST_BELOW_HALF = np.nextafter(F32(0.5), F32(0.0))


def roundf_to_int8(v: np.ndarray) -> np.ndarray:
    """roundf(v) for |v| <= 127.5 as int8 in 3 passes: trunc(v + copysign(0.5 - 2^-25, v)).

    Exact: for a tie k + 0.5 the sum k + 1 - 2^-25 rounds (RNE) to k + 1; for any v below a tie the sum
    stays below the next integer (v is at least one ulp below the tie and the sum's ulp is no larger than
    v's, except for v in [0.25, 0.5) where the sum is < 1). tests/test_quants_simple.py checks every float
    within 4 ulps of each integer and half-integer up to 128 against the floor-based roundf.
    """
    v += np.copysign(_JUST_BELOW_HALF, v)
    return v.astype(np.int8)  # float -> int conversion truncates toward zero


class Q8_0(GridQuantType, qtype=GGMLQuantizationType.Q8_0):
    uses_imatrix = False
    searches_without_imatrix = False
    level_min, level_max = -128, 127  # ggml's quantizer writes -127..127, to_float reads any int8

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        # The block maxima come from the transposed layout (fast reductions); the elementwise work
        # stays in block-major order so the int8 codes need no transposition back.
        xt = transposed_blocks(rows, 32)
        # + 0.0: fabsf never yields -0.0, np.maximum(+0.0, -0.0) may
        amax = np.maximum(xt.max(axis=0), -xt.min(axis=0)) + F32(0.0)
        d = amax / F32(127.0)
        with np.errstate(divide="ignore", over="ignore"):
            inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
        with np.errstate(invalid="ignore"):  # 0 * inf in blocks whose inverse overflowed
            scaled = rows.reshape(-1, 32) * inv[:, None]
        out = np.empty((scaled.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        with np.errstate(invalid="ignore"):
            codes = roundf_to_int8(scaled).view(np.uint8)
        cls.write_levels(out, zero_codes_where_inverse_overflows(codes.T, inv).T)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return cls.affine_grid(step=read_half(blocks, 0), offset=None, sub_size=32, zero=0)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks[:, 2:]).view(np.int8)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 2:] = levels.astype(np.int8, copy=False).view(np.uint8)  # uint8 input: its own bytes
