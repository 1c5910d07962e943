"""Q5_1 (32-blocks, fp16 scale + fp16 min, 5-bit unsigned quants).

Reference path = quantize_row_q5_1_ref (note: no clamp to 31, the C stores the truncated value as is);
imatrix path = quantize_row_q5_1_impl (make_qkx3_quants, nmax 31).
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    GridQuantType,
    LevelGrid,
    half_bytes,
    min_block_codes,
    pack_bit4,
    pack_nibbles,
    read_half,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_1(GridQuantType, qtype=GGMLQuantizationType.Q5_1):
    uses_imatrix = True
    searches_without_imatrix = False
    level_min, level_max = 0, 31

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, m, qt = min_block_codes(rows, imatrix, 31, clamp_ref=False)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:4] = half_bytes(m)
        cls.write_levels(out, qt.T)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return cls.affine_grid(step=read_half(blocks, 0), offset=read_half(blocks, 2), sub_size=32, zero=0)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_nibbles(blocks[:, 8:]) | unpack_bit4(blocks[:, 4:8])

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 4:8] = pack_bit4(levels.T)
        blocks[:, 8:] = pack_nibbles(levels.T)
