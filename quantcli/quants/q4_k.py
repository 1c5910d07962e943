"""Q4_K: 256-element super-blocks of 8 sub-blocks x 32, 4-bit levels with a 6-bit scale and min each.

Block (144 bytes): d:f16, dmin:f16, scales[12] (6-bit scale/min codes, packed), qs[128] (nibbles).
Without an imatrix this is ggml's quantize_row_q4_K_ref, with one quantize_row_q4_K_impl (llama-quantize's
dispatch; formats/ggml-kquants.md). The scale/min machinery (ggml.quantize_scale_min_blocks) is shared with Q5_K.
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    QK_K,
    GridQuantType,
    LevelGrid,
    ScaleMinParams,
    half_bytes,
    quantize_scale_min_blocks,
    scale_min_grid,
)

Q4K_PARAMS = ScaleMinParams(nmax=15, ref_rmin=-1.0, ref_nstep=20, clamp_impl_codes=False)


class Q4_K(GridQuantType, qtype=GGMLQuantizationType.Q4_K):
    uses_imatrix = True
    level_min, level_max = 0, 15

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        res = quantize_scale_min_blocks(rows, imatrix, Q4K_PARAMS)
        nb = res.levels.shape[0]
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(res.d)
        out[:, 2:4] = half_bytes(res.dmin)
        out[:, 4:16] = res.scales
        cls.write_levels(out, res.levels)
        return out.reshape(nrows, -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return scale_min_grid(blocks, cls.level_max)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        qs = blocks[:, 16:144].reshape(-1, 4, 1, 32)
        return np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(-1, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        nb = levels.shape[0]
        lv = levels.reshape(nb, 4, 2, 32)  # group g: sub-block 2g low nibbles, 2g+1 high nibbles
        blocks[:, 16:144] = (lv[:, :, 0, :] | (lv[:, :, 1, :] << 4)).astype(np.uint8).reshape(nb, 128)

