"""Q5_0 (32-blocks, fp16 scale, 5-bit signed quants: low nibbles + a 32-bit high-bit mask).

Reference path = quantize_row_q5_0_ref; imatrix path = quantize_row_q5_0_impl (make_qx_quants, nmax 16).
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    GridQuantType,
    LevelGrid,
    half_bytes,
    pack_bit4,
    pack_nibbles,
    read_half,
    symmetric_block_codes,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_0(GridQuantType, qtype=GGMLQuantizationType.Q5_0):
    uses_imatrix = True
    searches_without_imatrix = False
    level_min, level_max = 0, 31

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, qt = symmetric_block_codes(rows, imatrix, 16)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        cls.write_levels(out, qt.T)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return cls.affine_grid(step=read_half(blocks, 0), offset=None, sub_size=32, zero=16)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_nibbles(blocks[:, 6:]) | unpack_bit4(blocks[:, 2:6])

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 2:6] = pack_bit4(levels.T)
        blocks[:, 6:] = pack_nibbles(levels.T)
