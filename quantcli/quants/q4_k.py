"""Q4_K: 256-element super-blocks of 8 sub-blocks x 32, 4-bit levels with a 6-bit scale and min each.

Block (144 bytes): d:f16, dmin:f16, scales[12] (6-bit scale/min codes, packed), qs[128] (nibbles).
Without an imatrix this is ggml's quantize_row_q4_K_ref, with one quantize_row_q4_K_impl (llama-quantize's
dispatch, spec §3.2). The scale/min machinery is shared with Q5_K (q5_k.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants._common import nearest_int
from quantcli.quants._kquant_search import (
    F32,
    KQuantType,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    running_max,
    seq_sum,
)

QK_K = 256


def element_major(blocks: np.ndarray, group: int) -> np.ndarray:
    """(NB, 256) -> (group, NB*256/group): column b*(256/group)+s is sub-block s of block b."""
    return np.ascontiguousarray(blocks.reshape(-1, group).T)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """ggml's 12-byte packing of eight 6-bit scales and mins: (NB, 8) ints -> (NB, 12) uint8.

    Written exactly like the C stores (including their uint8 wrap-around) so odd codes pack the same.
    """
    ls = ls.astype(np.int32) & 0xFF
    lm = lm.astype(np.int32) & 0xFF
    out = np.zeros((ls.shape[0], 12), dtype=np.int32)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return (out & 0xFF).astype(np.uint8)


def unpack_scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for all 8 sub-blocks: (NB, 12) uint8 -> (sc, m), each (NB, 8) int32."""
    q = packed.astype(np.int32)
    sc = np.empty((q.shape[0], 8), dtype=np.int32)
    m = np.empty((q.shape[0], 8), dtype=np.int32)
    sc[:, 0:4] = q[:, 0:4] & 63
    m[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, m


@dataclass
class ScaleMinBlocks:
    d: np.ndarray  # (NB,) float16
    dmin: np.ndarray  # (NB,) float16
    scales: np.ndarray  # (NB, 12) uint8
    levels: np.ndarray  # (NB, 256) int32, 0..nmax


@dataclass(frozen=True)
class ScaleMinParams:
    nmax: int
    ref_rmin: float
    ref_nstep: int
    clamp_impl_codes: bool  # Q5_K_impl applies MIN(63, .) to the make_qp_quants codes, Q4_K_impl does not


def quantize_scale_min_blocks(rows: np.ndarray, imatrix: np.ndarray | None, p: ScaleMinParams) -> ScaleMinBlocks:
    """Everything of Q4_K/Q5_K except the bit packing of the levels."""
    blocks = np.ascontiguousarray(rows, dtype=F32).reshape(-1, QK_K)
    nb = blocks.shape[0]
    xs = element_major(blocks, 32)  # (32, NB*8)
    if imatrix is None:
        # quantize_row_qX_K_ref: weights av_x + |x| with av_x = sqrt(mean of the sub-block's x^2)
        av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
        weights = av_x + np.abs(xs)
        scale, levels, the_min = make_qkx2_quants(xs, weights, p.nmax, p.ref_rmin, 0.1, p.ref_nstep, False)
        scale_b = scale.reshape(nb, 8).T  # (8, NB)
        min_b = the_min.reshape(nb, 8).T
        max_scale = running_max(scale_b)
        max_min = running_max(min_b)
        with np.errstate(all="ignore"):
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
            # uint8_t ls = nearest_int(...); ls = MIN(63, ls): the uint8 store wraps before the MIN
            ls = np.minimum(nearest_int(inv_scale * scale_b) & 0xFF, 63)
            lm = np.minimum(nearest_int(inv_min * min_b) & 0xFF, 63)
        d = (max_scale / F32(63)).astype(np.float16)
        dmin = (max_min / F32(63)).astype(np.float16)
        packed = pack_scale_min_k4(ls.T, lm.T)
    else:
        qw = element_major(np.broadcast_to(imatrix.astype(F32), rows.shape).reshape(-1, QK_K), 32)
        xb = blocks.T  # (256, NB) view: sequential sum over all 256 elements of each block
        sigma2 = (F32(2) * seq_sum(xb * xb)) / F32(QK_K)
        sigma2_sub = np.repeat(sigma2, 8)  # sub-block column b*8+s belongs to block b
        weights = qw * np.sqrt(sigma2_sub + xs * xs)
        sw = seq_sum(weights)
        scale, levels, the_min = make_qkx3_quants(xs, weights, p.nmax, -0.9, 0.05, 36, False)
        sw_b = np.ascontiguousarray(sw.reshape(nb, 8).T)
        d_block, ls = make_qp_quants(np.ascontiguousarray(scale.reshape(nb, 8).T), 63, sw_b)
        m_block, lm = make_qp_quants(np.ascontiguousarray(the_min.reshape(nb, 8).T), 63, sw_b)
        if p.clamp_impl_codes:
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
        d = d_block.astype(np.float16)
        dmin = m_block.astype(np.float16)
        packed = pack_scale_min_k4(ls.T, lm.T)

    # Re-derive the levels from the stored (fp16-rounded) scales; a sub-block whose scale is 0 keeps the
    # levels of the search.
    sc, m = unpack_scale_min_k4(packed)
    dd = d.astype(F32)[:, None] * sc.astype(F32)  # (NB, 8)
    dm = dmin.astype(F32)[:, None] * m.astype(F32)
    x3 = blocks.reshape(nb, 8, 32)
    with np.errstate(all="ignore"):
        requant = nearest_int((x3 + dm[:, :, None]) / dd[:, :, None])
    np.clip(requant, 0, p.nmax, out=requant)
    search_levels = levels.T.reshape(nb, 8, 32)
    final = np.where((dd != 0)[:, :, None], requant, search_levels).reshape(nb, QK_K)
    return ScaleMinBlocks(d=d, dmin=dmin, scales=packed, levels=final)


def dequantize_scale_min_blocks(
    d: np.ndarray, dmin: np.ndarray, scales: np.ndarray, levels: np.ndarray
) -> np.ndarray:
    """y = (d*sc)*q - (dmin*m) per sub-block, as dequantize_row_q4_K / q5_K compute it. levels (NB, 256)."""
    sc, m = unpack_scale_min_k4(scales)
    d1 = d.astype(F32)[:, None] * sc.astype(F32)
    m1 = dmin.astype(F32)[:, None] * m.astype(F32)
    nb = levels.shape[0]
    q = levels.reshape(nb, 8, 32).astype(F32)
    return (d1[:, :, None] * q - m1[:, :, None]).reshape(nb, QK_K)


Q4K_PARAMS = ScaleMinParams(nmax=15, ref_rmin=-1.0, ref_nstep=20, clamp_impl_codes=False)


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.astype("<f2")).view(np.uint8).reshape(-1, 2)


class Q4_K(KQuantType, qtype=GGMLQuantizationType.Q4_K):
    uses_imatrix = True

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        res = quantize_scale_min_blocks(rows, imatrix, Q4K_PARAMS)
        nb = res.levels.shape[0]
        lv = res.levels.reshape(nb, 4, 2, 32)  # group g: sub-block 2g low nibbles, 2g+1 high nibbles
        qs = (lv[:, :, 0, :] | (lv[:, :, 1, :] << 4)).astype(np.uint8).reshape(nb, 128)
        out = np.empty((nb, cls.type_size), dtype=np.uint8)
        out[:, 0:2] = _fp16_bytes(res.d)
        out[:, 2:4] = _fp16_bytes(res.dmin)
        out[:, 4:16] = res.scales
        out[:, 16:144] = qs
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        nrows = data.shape[0]
        blk = np.ascontiguousarray(data).reshape(-1, cls.type_size)
        nb = blk.shape[0]
        d = blk[:, 0:2].copy().view("<f2").reshape(nb)
        dmin = blk[:, 2:4].copy().view("<f2").reshape(nb)
        qs = blk[:, 16:144].reshape(nb, 4, 1, 32)
        levels = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(nb, QK_K)
        return dequantize_scale_min_blocks(d, dmin, blk[:, 4:16], levels).reshape(nrows, ncols)

