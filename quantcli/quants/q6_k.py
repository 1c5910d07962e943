"""Q6_K: 256-element super-blocks of 16 sub-blocks x 16, 6-bit symmetric levels, int8 sub-block scales.

Block (210 bytes): ql[128], qh[64], scales: int8[16], d:f16. Element 128h+32k+t (h=0,1; k=0..3; t<32)
has its low nibble in ql[64h+t] (k=0 low, k=2 high) or ql[64h+32+t] (k=1 low, k=3 high) and its top two
bits at bit 2k of qh[32h+t]. Without an imatrix ggml uses quantize_row_q6_K_ref (weights x^2), with one
quantize_row_q6_K_impl, which passes the raw imatrix as weights; otherwise the two are the same.
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    F32,
    GROUP_MAX_EPS,
    QK_K,
    GridQuantType,
    LevelGrid,
    as_blocks,
    half_bytes,
    make_qx_quants,
    nearest_int,
    read_half,
    signed_absmax,
    transposed_blocks,
    transposed_imatrix,
)


class Q6_K(GridQuantType, qtype=GGMLQuantizationType.Q6_K):
    uses_imatrix = True
    level_min, level_max = 0, 63

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, QK_K)
        nb = blocks.shape[0]
        xs = transposed_blocks(blocks, 16)  # (16, NB*16)
        qw = None if imatrix is None else transposed_imatrix(imatrix, nrows, 16)
        scale, codes = make_qx_quants(xs, 32, qw)
        scale_b = scale.reshape(nb, 16)
        max_abs, max_scale = signed_absmax(np.ascontiguousarray(scale_b.T))
        empty = max_abs < GROUP_MAX_EPS
        with np.errstate(all="ignore"):
            iscale = F32(-128) / max_scale
            d = (F32(1) / iscale).astype(np.float16)
            # int8 store of MIN(127, nearest_int(...)) wraps
            sc = np.minimum(nearest_int(iscale[:, None] * scale_b), 127).astype(np.int8)
            dd = d.astype(F32)[:, None] * sc.astype(F32)  # (NB, 16)
            requant = nearest_int(blocks.reshape(nb, 16, 16) / dd[:, :, None])
        np.clip(requant, -32, 31, out=requant)
        requant += 32
        search_codes = codes.T.reshape(nb, 16, 16)
        levels = np.where((dd != 0)[:, :, None], requant, search_codes)
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        cls.write_levels(out, levels.reshape(nb, QK_K))
        out[:, 192:208] = sc.view(np.uint8)
        out[:, 208:210] = half_bytes(d)
        out[empty] = 0  # an all-zero block (max |scale| < 1e-15) is written as 210 zero bytes
        return out.reshape(nrows, -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        sc = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(F32)  # (nb, 16)
        # C: d * sc[is] * q == (d*sc)*q
        return cls.affine_grid(step=read_half(blocks, 208) * sc, offset=None, sub_size=16, zero=32)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        ql = blocks[:, 0:128].reshape(-1, 2, 2, 32).astype(np.int32)
        qh = blocks[:, 128:192].reshape(-1, 2, 1, 32).astype(np.int32)
        low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (nb, 2, 4, 32): k = 0,1 low nibbles; 2,3 high
        high = (qh >> (2 * np.arange(4, dtype=np.int32)).reshape(1, 1, 4, 1)) & 3
        return (low | (high << 4)).reshape(-1, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        nb = levels.shape[0]
        lv = levels.astype(np.int32, copy=False).reshape(nb, 2, 4, 32)
        ql = np.empty((nb, 2, 2, 32), dtype=np.int32)
        ql[:, :, 0, :] = (lv[:, :, 0, :] & 0xF) | ((lv[:, :, 2, :] & 0xF) << 4)
        ql[:, :, 1, :] = (lv[:, :, 1, :] & 0xF) | ((lv[:, :, 3, :] & 0xF) << 4)
        top = lv >> 4
        qh = top[:, :, 0, :] | (top[:, :, 1, :] << 2) | (top[:, :, 2, :] << 4) | (top[:, :, 3, :] << 6)
        blocks[:, 0:128] = (ql & 0xFF).astype(np.uint8).reshape(nb, 128)
        blocks[:, 128:192] = (qh & 0xFF).astype(np.uint8).reshape(nb, 64)
