"""Q8_0 (32-blocks, fp16 scale, int8 quants) = quantize_row_q8_0_ref; ggml ignores the imatrix."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import F32, as_blocks, half_bytes, read_half


def roundf_inplace(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero) of float32 `v`, in place: rint, then push exact .5 ties outward.

    v - rint(v) is exact, so a tie is detected exactly; for a tie v + copysign(0.5, v) is an exact integer.
    """
    r = np.rint(v)
    tie = np.abs(v - r) == F32(0.5)
    if tie.any():
        r[tie] = v[tie] + np.copysign(F32(0.5), v[tie])
    v[...] = r
    return v


class Q8_0(QuantType, qtype=GGMLQuantizationType.Q8_0):
    uses_imatrix = False

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, 32)
        amax = np.abs(blocks).max(axis=1)
        d = amax / F32(127.0)
        with np.errstate(divide="ignore"):
            inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
        q = roundf_inplace(blocks * inv[:, None])
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:] = q.astype(np.int8).view(np.uint8)
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = np.ascontiguousarray(blocks[:, 2:]).view(np.int8).astype(F32)
        return (q * d).reshape(data.shape[0], ncols)
