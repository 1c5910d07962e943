"""Q4_0 (32-blocks, fp16 scale, 4-bit signed quants).

Reference path (no imatrix) = quantize_row_q4_0_ref; with an imatrix = quantize_row_q4_0_impl
(make_qx_quants, nmax 8). Byte layout: formats/ggml-blocks.md; the shared routines live in ggml.py.
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    GridQuantType,
    LevelGrid,
    half_bytes,
    pack_nibbles,
    read_half,
    symmetric_block_codes,
    unpack_nibbles,
)


class Q4_0(GridQuantType, qtype=GGMLQuantizationType.Q4_0):
    uses_imatrix = True
    searches_without_imatrix = False
    level_min, level_max = 0, 15

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, qt = symmetric_block_codes(rows, imatrix, 8)
        out = np.empty((qt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        cls.write_levels(out, qt.T)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return cls.affine_grid(step=read_half(blocks, 0), offset=None, sub_size=32, zero=8)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_nibbles(blocks[:, 2:])

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 2:] = pack_nibbles(levels.T)
