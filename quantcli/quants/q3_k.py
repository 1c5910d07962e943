"""Q3_K: 256-element super-blocks of 16 sub-blocks x 16, 3-bit symmetric levels, 6-bit sub-block scales.

Block (110 bytes): hmask[32], qs[64], scales[12], d:f16. Level L (0..7, value L-4): its low two bits sit at
bit 2k of qs[32h+t] for element 128h+32k+t, its high bit (L >= 4) at bit e//32 of hmask[e%32]. Scale codes
c (0..63, scale c-32): low nibbles in scales[0..7] (c[j] low, c[j+8] high), top two bits of c[j] at bit
2*(j//4) of scales[8 + j%4]. ggml: quantize_row_q3_K_ref (make_q3_quants) without an imatrix,
quantize_row_q3_K_impl (make_qx_quants twice) with one.
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
    make_q3_quants,
    make_qx_quants,
    nearest_int,
    read_half,
    seq_sum,
    signed_absmax,
    transposed_blocks,
    transposed_imatrix,
)

_J = np.arange(16)


def pack_q3_scales(codes: np.ndarray) -> np.ndarray:
    """(NB, 16) 6-bit codes -> (NB, 12) uint8, as the C `|=` stores build them."""
    c = codes.astype(np.int32)
    out = np.zeros((c.shape[0], 12), dtype=np.int32)
    out[:, 0:8] = (c[:, 0:8] & 0xF) | ((c[:, 8:16] & 0xF) << 4)
    high = (c >> 4) << (2 * (_J // 4))  # (NB, 16)
    for r in range(4):
        out[:, 8 + r] = high[:, r] | high[:, r + 4] | high[:, r + 8] | high[:, r + 12]
    return (out & 0xFF).astype(np.uint8)


def unpack_q3_scales(packed: np.ndarray) -> np.ndarray:
    """(NB, 12) uint8 -> signed scales c-32 as int32 (NB, 16)."""
    s = packed.astype(np.int32)
    low = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
    high = (s[:, 8 + _J % 4] >> (2 * (_J // 4))) & 3
    return (low | (high << 4)) - 32


class Q3_K(GridQuantType, qtype=GGMLQuantizationType.Q3_K):
    uses_imatrix = True
    level_min, level_max = 0, 7

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, QK_K)
        nb = blocks.shape[0]
        xs = transposed_blocks(blocks, 16)  # (16, NB*16)
        if imatrix is None:
            scale, levels = make_q3_quants(xs, 4)
            scale_b = scale.reshape(nb, 16)
            _, max_scale = signed_absmax(np.ascontiguousarray(scale_b.T))
            nonzero = max_scale != 0
            with np.errstate(all="ignore"):
                iscale = F32(-32) / max_scale
                # int8_t l = nearest_int(...) wraps, then MAX(-32, MIN(31, l)) + 32
                codes = np.clip(nearest_int(iscale[:, None] * scale_b).astype(np.int8), -32, 31).astype(np.int32)
                codes += 32
                d_val = np.where(nonzero, F32(1) / iscale, F32(0))
            codes = np.where(nonzero[:, None], codes, 0)
            d = d_val.astype(np.float16)
            packed = np.where(nonzero[:, None], pack_q3_scales(codes), np.uint8(0))
        else:
            qw = transposed_imatrix(imatrix, nrows, 16)
            weights = kquant_impl_weights(blocks, xs, qw, sigma_factor=2)
            sw = seq_sum(weights)
            scale, levels = make_qx_quants(xs, 4, weights)
            d_block, codes = make_qx_quants(
                np.ascontiguousarray(scale.reshape(nb, 16).T), 32, np.ascontiguousarray(sw.reshape(nb, 16).T)
            )
            packed = pack_q3_scales(codes.T)
            d = d_block.astype(np.float16)

        sc = unpack_q3_scales(packed)
        dd = d.astype(F32)[:, None] * sc.astype(F32)  # (NB, 16)
        with np.errstate(all="ignore"):
            requant = nearest_int(blocks.reshape(nb, 16, 16) / dd[:, :, None])
        np.clip(requant, -4, 3, out=requant)
        requant += 4
        final = np.where((dd != 0)[:, :, None], requant, levels.T.reshape(nb, 16, 16)).reshape(nb, QK_K)
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        cls.write_levels(out, final)
        out[:, 96:108] = packed
        out[:, 108:110] = half_bytes(d)
        return out.reshape(nrows, -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        step = read_half(blocks, 108) * unpack_q3_scales(blocks[:, 96:108]).astype(F32)  # (nb, 16)
        return cls.affine_grid(step=step, offset=None, sub_size=16, zero=4)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        qs = blocks[:, 32:96].reshape(nb, 2, 1, 32)
        low = (qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3  # (nb, 2, 4, 32) uint8
        hm = blocks[:, 0:32][:, None, :]  # (nb, 1, 32)
        hbit = (hm >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (nb, 8, 32): e = 32*m + t
        # level L = low | hbit<<2 in 0..7, value L - 4 (== low - (hbit ? 0 : 4))
        return (low.reshape(nb, 8, 32) | (hbit << 2)).reshape(nb, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        nb = levels.shape[0]
        high = levels > 3
        hbits = high.reshape(nb, 8, 32).astype(np.int32) << np.arange(8, dtype=np.int32)[None, :, None]
        low = np.where(high, levels - 4, levels).astype(np.int32).reshape(nb, 2, 4, 32)
        qs = low[:, :, 0, :] | (low[:, :, 1, :] << 2) | (low[:, :, 2, :] << 4) | (low[:, :, 3, :] << 6)
        blocks[:, 0:32] = np.bitwise_or.reduce(hbits, axis=1).astype(np.uint8)
        blocks[:, 32:96] = (qs & 0xFF).astype(np.uint8).reshape(nb, 64)
