"""Q4_1 (32-blocks, fp16 scale + fp16 min, 4-bit unsigned quants).

Reference path = quantize_row_q4_1_ref; imatrix path = quantize_row_q4_1_impl, i.e. make_qkx3_quants
(rmin -0.9, rdelta 0.05, nstep 36, squared error). The shared routines live in ggml.py.
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    GridQuantType,
    LevelGrid,
    half_bytes,
    min_block_codes,
    pack_nibbles,
    read_half,
    unpack_nibbles,
)


class Q4_1(GridQuantType, qtype=GGMLQuantizationType.Q4_1):
    uses_imatrix = True
    searches_without_imatrix = False
    level_min, level_max = 0, 15

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, m, qt = min_block_codes(rows, imatrix, 15, clamp_ref=True)
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
        return unpack_nibbles(blocks[:, 4:])

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 4:] = pack_nibbles(levels.T)
