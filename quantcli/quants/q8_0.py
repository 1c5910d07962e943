"""Q8_0 (32-blocks, fp16 scale, int8 quants) = quantize_row_q8_0_ref; ggml ignores the imatrix."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    SlicedQuantType,
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


class Q8_0(SlicedQuantType, qtype=GGMLQuantizationType.Q8_0):
    uses_imatrix = False
    searches_without_imatrix = False

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
        out[:, 2:] = zero_codes_where_inverse_overflows(codes.T, inv).T
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(F32)
        return (q * d).reshape(data.shape[0], ncols)
