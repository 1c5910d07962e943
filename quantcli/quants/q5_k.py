"""Q5_K: Q4_K's scale/min scheme with 5-bit levels (the 5th bit in qh).

Block (176 bytes): d:f16, dmin:f16, scales[12], qh[32], qs[128]. Element 64g+t (g=0..3, t<32) has its low
nibble in qs[32g+t] & 15 and its 5th bit at bit 2g of qh[t]; element 64g+32+t uses qs[32g+t] >> 4 and
bit 2g+1. ggml: quantize_row_q5_K_ref without an imatrix, quantize_row_q5_K_impl with one.
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

Q5K_PARAMS = ScaleMinParams(nmax=31, ref_rmin=-0.5, ref_nstep=15, clamp_impl_codes=True)
_GROUP_SHIFTS = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)  # bit of (group g, half) in qh[t]
_GROUP_BITS = np.int32(1) << _GROUP_SHIFTS.astype(np.int32)


class Q5_K(GridQuantType, qtype=GGMLQuantizationType.Q5_K):
    uses_imatrix = True
    level_min, level_max = 0, 31

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        res = quantize_scale_min_blocks(rows, imatrix, Q5K_PARAMS)
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
        qh = blocks[:, 16:48][:, None, None, :]  # (nb, 1, 1, 32) uint8
        qs = blocks[:, 48:176].reshape(-1, 4, 1, 32)
        low = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (nb, 4, 2, 32) uint8
        high = ((qh >> _GROUP_SHIFTS) & 1) << 4
        return (low | high).reshape(-1, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        nb = levels.shape[0]
        lv = levels.reshape(nb, 4, 2, 32)
        low = lv & 0xF
        blocks[:, 48:176] = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).astype(np.uint8).reshape(nb, 128)
        # disjoint bits: OR == sum
        blocks[:, 16:48] = np.where(lv > 15, _GROUP_BITS, 0).sum(axis=(1, 2)).astype(np.uint8)
