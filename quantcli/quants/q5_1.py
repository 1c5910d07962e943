"""Q5_1 (32-blocks, fp16 scale + fp16 min, 5-bit unsigned quants).

Reference path = quantize_row_q5_1_ref (note: no clamp to 31, the C stores the truncated value as is);
imatrix path = quantize_row_q5_1_impl (make_qkx3_quants, nmax 31).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    SlicedQuantType,
    half_bytes,
    min_block_codes,
    pack_bit4,
    pack_nibbles,
    read_half,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_1(SlicedQuantType, qtype=GGMLQuantizationType.Q5_1):
    uses_imatrix = True
    searches_without_imatrix = False

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, m, qt = min_block_codes(rows, imatrix, 31, clamp_ref=False)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:4] = half_bytes(m)
        out[:, 4:8] = pack_bit4(qt)
        out[:, 8:] = pack_nibbles(qt)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        m = read_half(blocks, 2)
        q = (unpack_nibbles(blocks[:, 8:]) | unpack_bit4(blocks[:, 4:8])).astype(F32)
        return (q * d + m).reshape(data.shape[0], ncols)
