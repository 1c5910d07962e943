"""Q4_1 (32-blocks, fp16 scale + fp16 min, 4-bit unsigned quants).

Reference path = quantize_row_q4_1_ref; imatrix path = quantize_row_q4_1_impl, i.e. make_qkx3_quants
(rmin -0.9, rdelta 0.05, nstep 36, squared error). The shared routines live in ggml.py.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    SlicedQuantType,
    half_bytes,
    min_block_codes,
    pack_nibbles,
    read_half,
    unpack_nibbles,
)


class Q4_1(SlicedQuantType, qtype=GGMLQuantizationType.Q4_1):
    uses_imatrix = True
    searches_without_imatrix = False

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, m, qt = min_block_codes(rows, imatrix, 15, clamp_ref=True)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:4] = half_bytes(m)
        out[:, 4:] = pack_nibbles(qt)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        m = read_half(blocks, 2)
        q = unpack_nibbles(blocks[:, 4:]).astype(F32)
        return (q * d + m).reshape(data.shape[0], ncols)
