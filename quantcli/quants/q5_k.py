"""Q5_K: Q4_K's scale/min scheme with 5-bit levels (the 5th bit in qh).

Block (176 bytes): d:f16, dmin:f16, scales[12], qh[32], qs[128]. Element 64g+t (g=0..3, t<32) has its low
nibble in qs[32g+t] & 15 and its 5th bit at bit 2g of qh[t]; element 64g+32+t uses qs[32g+t] >> 4 and
bit 2g+1. ggml: quantize_row_q5_K_ref without an imatrix, quantize_row_q5_K_impl with one.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    QK_K,
    ScaleMinParams,
    SlicedQuantType,
    dequantize_scale_min_blocks,
    half_bytes,
    quantize_scale_min_blocks,
    read_half,
)

Q5K_PARAMS = ScaleMinParams(nmax=31, ref_rmin=-0.5, ref_nstep=15, clamp_impl_codes=True)
_GROUP_SHIFTS = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)  # bit of (group g, half) in qh[t]
_GROUP_BITS = np.int32(1) << _GROUP_SHIFTS.astype(np.int32)


class Q5_K(SlicedQuantType, qtype=GGMLQuantizationType.Q5_K):
    uses_imatrix = True

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        res = quantize_scale_min_blocks(rows, imatrix, Q5K_PARAMS)
        nb = res.levels.shape[0]
        lv = res.levels.reshape(nb, 4, 2, 32)
        low = lv & 0xF
        qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).astype(np.uint8).reshape(nb, 128)
        qh = np.where(lv > 15, _GROUP_BITS, 0).sum(axis=(1, 2)).astype(np.uint8)  # disjoint bits: OR == sum
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(res.d)
        out[:, 2:4] = half_bytes(res.dmin)
        out[:, 4:16] = res.scales
        out[:, 16:48] = qh
        out[:, 48:176] = qs
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        nrows = data.shape[0]
        blk = np.ascontiguousarray(data).reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = read_half(blk, 0).reshape(nb)
        dmin = read_half(blk, 2).reshape(nb)
        qh = blk[:, 16:48][:, None, None, :]  # (nb, 1, 1, 32) uint8
        qs = blk[:, 48:176].reshape(nb, 4, 1, 32)
        low = np.concatenate([qs & 0xF, qs >> 4], axis=2)  # (nb, 4, 2, 32) uint8
        high = ((qh >> _GROUP_SHIFTS) & 1) << 4
        levels = (low | high).reshape(nb, QK_K)
        return dequantize_scale_min_blocks(d, dmin, blk[:, 4:16], levels).reshape(nrows, ncols)
