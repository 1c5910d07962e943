"""Q4_0 (32-blocks, fp16 scale, 4-bit signed quants).

Reference path (no imatrix) = quantize_row_q4_0_ref; with an imatrix = quantize_row_q4_0_impl
(make_qx_quants, nmax 8). Byte layout: formats/ggml-blocks.md; the shared routines live in ggml.py.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    SlicedQuantType,
    half_bytes,
    pack_nibbles,
    read_half,
    symmetric_block_codes,
    unpack_nibbles,
)


class Q4_0(SlicedQuantType, qtype=GGMLQuantizationType.Q4_0):
    uses_imatrix = True
    searches_without_imatrix = False

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, qt = symmetric_block_codes(rows, imatrix, 8)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:] = pack_nibbles(qt)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
