"""Q6_K: 256-element super-blocks of 16 sub-blocks x 16, 6-bit symmetric levels, int8 sub-block scales.

Block (210 bytes): ql[128], qh[64], scales: int8[16], d:f16. Element 128h+32k+t (h=0,1; k=0..3; t<32)
has its low nibble in ql[64h+t] (k=0 low, k=2 high) or ql[64h+32+t] (k=1 low, k=3 high) and its top two
bits at bit 2k of qh[32h+t]. Without an imatrix ggml uses quantize_row_q6_K_ref (weights x^2), with one
quantize_row_q6_K_impl, which passes the raw imatrix as weights; otherwise the two are the same.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.ggml import (
    F32,
    GROUP_MAX_EPS,
    QK_K,
    SlicedQuantType,
    as_blocks,
    half_bytes,
    make_qx_quants,
    nearest_int,
    read_half,
    signed_absmax,
    transposed_blocks,
    transposed_imatrix,
)


class Q6_K(SlicedQuantType, qtype=GGMLQuantizationType.Q6_K):
    uses_imatrix = True

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
        levels = np.where((dd != 0)[:, :, None], requant, search_codes).reshape(nb, 2, 4, 32)
        ql = np.empty((nb, 2, 2, 32), dtype=np.int32)
        ql[:, :, 0, :] = (levels[:, :, 0, :] & 0xF) | ((levels[:, :, 2, :] & 0xF) << 4)
        ql[:, :, 1, :] = (levels[:, :, 1, :] & 0xF) | ((levels[:, :, 3, :] & 0xF) << 4)
        top = levels >> 4
        qh = top[:, :, 0, :] | (top[:, :, 1, :] << 2) | (top[:, :, 2, :] << 4) | (top[:, :, 3, :] << 6)
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        out[:, 0:128] = (ql & 0xFF).astype(np.uint8).reshape(nb, 128)
        out[:, 128:192] = (qh & 0xFF).astype(np.uint8).reshape(nb, 64)
        out[:, 192:208] = sc.view(np.uint8)
        out[:, 208:210] = half_bytes(d)
        out[empty] = 0  # an all-zero block (max |scale| < 1e-15) is written as 210 zero bytes
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        nrows = data.shape[0]
        blk = np.ascontiguousarray(data).reshape(-1, cls.type_size)
        nb = blk.shape[0]
        ql = blk[:, 0:128].reshape(nb, 2, 2, 32).astype(np.int32)
        qh = blk[:, 128:192].reshape(nb, 2, 1, 32).astype(np.int32)
        sc = blk[:, 192:208].copy().view(np.int8).astype(F32)  # (nb, 16)
        d = read_half(blk, 208).reshape(nb)
        low = np.concatenate([ql & 0xF, ql >> 4], axis=2)  # (nb, 2, 4, 32): k = 0,1 low nibbles; 2,3 high
        high = (qh >> (2 * np.arange(4, dtype=np.int32)).reshape(1, 1, 4, 1)) & 3
        q = ((low | (high << 4)) - 32).astype(F32).reshape(nb, 16, 16)
        dl = d[:, None] * sc  # C: d * sc[is] * q == (d*sc)*q
        return (dl[:, :, None] * q).reshape(nrows, ncols)
