"""Q2_K: 256-element super-blocks of 16 sub-blocks x 16, 2-bit levels with a 4-bit scale and min each.

Block (84 bytes): scales[16] (low nibble scale code, high nibble min code), qs[64], d:f16, dmin:f16.
Element 128h+32k+t (h=0,1; k=0..3; t<32) sits at bit 2k of qs[32h+t]; value d*sc*q - dmin*m.
ggml: quantize_row_q2_K_ref (make_qkx2_quants, mean-absolute-error search) without an imatrix,
quantize_row_q2_K_impl (make_qkx3_quants + make_qp_quants for the codes) with one.
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    F32,
    QK_K,
    GridQuantType,
    LevelGrid,
    as_blocks,
    half_bytes,
    kquant_impl_weights,
    make_qkx_quants,
    make_qp_quants,
    nearest_int,
    read_half,
    running_max,
    seq_sum,
    transposed_blocks,
    transposed_imatrix,
)


class Q2_K(GridQuantType, qtype=GGMLQuantizationType.Q2_K):
    uses_imatrix = True
    level_min, level_max = 0, 3

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, QK_K)
        nb = blocks.shape[0]
        xs = transposed_blocks(blocks, 16)  # (16, NB*16)
        if imatrix is None:
            scale, levels, the_min = make_qkx_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
            scale_b = np.ascontiguousarray(scale.reshape(nb, 16).T)
            min_b = np.ascontiguousarray(the_min.reshape(nb, 16).T)
            max_scale = running_max(scale_b)
            max_min = running_max(min_b)
            with np.errstate(all="ignore"):
                # y.scales[j] = l (uint8 store, no clamp); later `|= (l << 4)` for the min code
                sc = np.where(max_scale > 0, nearest_int((F32(15) / max_scale) * scale_b), 0)
                mc = np.where(max_min > 0, nearest_int((F32(15) / max_min) * min_b), 0)
            codes = ((sc & 0xFF) | (mc << 4)) & 0xFF  # (16, NB)
            d = np.where(max_scale > 0, max_scale / F32(15), F32(0)).astype(np.float16)
            dmin = np.where(max_min > 0, max_min / F32(15), F32(0)).astype(np.float16)
        else:
            qw = transposed_imatrix(imatrix, nrows, 16)
            weights = kquant_impl_weights(blocks, xs, qw, sigma_factor=1)  # no factor 2, unlike Q3_K..Q5_K
            sw = np.ascontiguousarray(seq_sum(weights).reshape(nb, 16).T)
            scale, levels, the_min = make_qkx_quants(xs, weights, 3, -0.9, 0.05, 36, False)
            d_block, ls = make_qp_quants(np.ascontiguousarray(scale.reshape(nb, 16).T), 15, sw)
            m_block, lm = make_qp_quants(np.ascontiguousarray(the_min.reshape(nb, 16).T), 15, sw)
            codes = (ls | (lm << 4)) & 0xFF
            d = d_block.astype(np.float16)
            dmin = m_block.astype(np.float16)

        codes = codes.T  # (NB, 16)
        dd = d.astype(F32)[:, None] * (codes & 0xF).astype(F32)
        dm = dmin.astype(F32)[:, None] * (codes >> 4).astype(F32)
        with np.errstate(all="ignore"):
            requant = nearest_int((blocks.reshape(nb, 16, 16) + dm[:, :, None]) / dd[:, :, None])
        np.clip(requant, 0, 3, out=requant)
        final = np.where((dd != 0)[:, :, None], requant, levels.T.reshape(nb, 16, 16))
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        out[:, 0:16] = codes.astype(np.uint8)
        cls.write_levels(out, final.reshape(nb, QK_K))
        out[:, 80:82] = half_bytes(d)
        out[:, 82:84] = half_bytes(dmin)
        return out.reshape(nrows, -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        codes = blocks[:, 0:16].astype(np.int32)
        step = read_half(blocks, 80) * (codes & 0xF).astype(F32)
        # C: dl * q - ml, and x - y is x + (-y) in IEEE arithmetic
        offset = -(read_half(blocks, 82) * (codes >> 4).astype(F32))
        return cls.affine_grid(step=step, offset=offset, sub_size=16, zero=0)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        qs = blocks[:, 16:80].reshape(-1, 2, 1, 32)
        return ((qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3).reshape(-1, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        nb = levels.shape[0]
        lv = levels.astype(np.int32, copy=False).reshape(nb, 2, 4, 32)
        qs = lv[:, :, 0, :] | (lv[:, :, 1, :] << 2) | (lv[:, :, 2, :] << 4) | (lv[:, :, 3, :] << 6)
        blocks[:, 16:80] = (qs & 0xFF).astype(np.uint8).reshape(nb, 64)
