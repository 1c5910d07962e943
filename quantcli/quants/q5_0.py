"""Q5_0 (32-blocks, fp16 scale, 5-bit signed quants: low nibbles + a 32-bit high-bit mask).

Reference path = quantize_row_q5_0_ref; imatrix path = quantize_row_q5_0_impl (make_qx_quants, nmax 16).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    SlicedQuantType,
    half_bytes,
    pack_bit4,
    pack_nibbles,
    read_half,
    symmetric_block_codes,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_0(SlicedQuantType, qtype=GGMLQuantizationType.Q5_0):
    uses_imatrix = True
    searches_without_imatrix = False

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, qt = symmetric_block_codes(rows, imatrix, 16)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:6] = pack_bit4(qt)
        out[:, 6:] = pack_nibbles(qt)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = (unpack_nibbles(blocks[:, 6:]) | unpack_bit4(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
