"""Q8_0 (32-blocks, fp16 scale, int8 quants) = quantize_row_q8_0_ref; ggml ignores the imatrix."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    half_bytes,
    in_row_slices,
    read_half,
    transposed_blocks,
    zero_codes_where_inverse_overflows,
)


def roundf_inplace(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero) of float32 `v`, in place; returns v.

    |v| = f + frac with f = floor(|v|): frac and 2*frac are exact, so f + floor(2*frac) rounds half up
    exactly (np.rint is half-to-even; trunc(v + 0.5) is wrong for 0.49999997).
    """
    sign_src = v.copy()
    np.abs(v, out=v)
    whole = np.floor(v)
    v -= whole
    v *= F32(2.0)
    np.floor(v, out=v)
    v += whole
    return np.copysign(v, sign_src, out=v)


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


class Q8_0(QuantType, qtype=GGMLQuantizationType.Q8_0):
    uses_imatrix = False

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            # The block maxima come from the transposed layout (fast reductions); the elementwise work
            # stays in block-major order so the int8 codes need no transposition back.
            xt = transposed_blocks(part, 32)
            # + 0.0: fabsf never yields -0.0, np.maximum(+0.0, -0.0) may
            amax = np.maximum(xt.max(axis=0), -xt.min(axis=0)) + F32(0.0)
            d = amax / F32(127.0)
            with np.errstate(divide="ignore", over="ignore"):
                inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
            with np.errstate(invalid="ignore"):  # 0 * inf in blocks whose inverse overflowed
                scaled = part.reshape(-1, 32) * inv[:, None]
            out = np.empty((scaled.shape[0], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(d)
            with np.errstate(invalid="ignore"):
                codes = roundf_to_int8(scaled).view(np.uint8)
            out[:, 2:] = zero_codes_where_inverse_overflows(codes.T, inv).T
            return out.reshape(part.shape[0], -1)

        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(F32)
        return (q * d).reshape(data.shape[0], ncols)
