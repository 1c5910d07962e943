"""IQ4_NL (32-blocks, fp16 scale, 4-bit indices into a non-linear table).

llama-quantize calls quantize_iq4_nl -> quantize_row_iq4_nl_impl(32, 32, ..., ntry=7) for every block,
with weights x² without an imatrix and qw*sqrtf(sigma2 + x²) with one (sigma2 = 2*Σx²/32 per block).
The search (`iq4_block_scales`) is shared with IQ4_XS. (quantize_row_iq4_nl_ref uses ntry=-1 and is NOT
what llama-quantize writes.)
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    GROUP_MAX_EPS,
    SEARCH_SLICE_ELEMENTS,
    half_bytes,
    in_row_slices,
    pack_nibbles,
    read_half,
    seq_sum,
    signed_absmax,
    transposed_blocks,
    transposed_imatrix,
    unpack_nibbles,
)

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV = KVALUES_IQ4NL.astype(F32)
NTRY = 7


# Midpoints between neighbouring table values (exact in float32: integers and halves).
_MIDPOINTS = ((_KV[:-1] + _KV[1:]) / F32(2)).astype(F32)


def best_index_iq4(x: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, x) elementwise -> uint8 index.

    The C clamps to 0 / 15 outside the table, binary-searches kv[mu-1] <= x < kv[mu], and returns mu-1
    iff `x - kv[mu-1] < kv[mu] - x` in float32. That is exactly "the number of midpoints <= x": near
    every midpoint both float32 differences are exact (they lie in a binade no finer than x's), and
    away from it rounding cannot reverse the comparison. Checked exhaustively for every float32 in
    [-127, 127] against a literal port of the C (formats/ggml-blocks.md); the tests re-check the
    neighbourhood of every midpoint.
    """
    idx = (x >= _MIDPOINTS[0]).view(np.uint8).copy()
    for mid in _MIDPOINTS[1:]:
        idx += (x >= mid).view(np.uint8)
    return idx


def best_index_iq4_literal(x: np.ndarray) -> np.ndarray:
    """A literal vectorised port of best_index_int8 (binary search + float32 comparison), for tests."""
    mu = np.clip(np.searchsorted(_KV, x, side="right"), 1, 15)
    lower = (x - _KV[mu - 1]) < (_KV[mu] - x)
    idx = (mu - lower).astype(np.uint8)
    idx[x <= _KV[0]] = 0
    idx[x >= _KV[15]] = 15
    return idx


def iq4_weights(xt: np.ndarray, super_block: int, imatrix_t: np.ndarray | None) -> np.ndarray:
    """Per-element weights of quantize_row_iq4_nl_impl on transposed blocks xt (32, B); B is a multiple
    of super_block/32 and imatrix_t is laid out like xt."""
    x2 = xt * xt
    if imatrix_t is None:
        return x2
    per_sub = super_block // 32
    # sigma2 = sequential Σx² over the super-block in element order: sub-block by sub-block, 32 each
    by_super = x2.reshape(32, -1, per_sub).transpose(2, 0, 1).reshape(super_block, -1)
    sigma2 = seq_sum(by_super) * (F32(2.0) / F32(super_block))
    return imatrix_t * np.sqrt(np.repeat(sigma2, per_sub)[None, :] + x2)


def iq4_block_scales(xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The per-32-block scale search of quantize_row_iq4_nl_impl (ntry = 7) -> float32 (B,), 0 if |x| < eps."""
    amax, vmax = signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1.0), vmax)

    stacked = np.empty((xt.shape[0], 2, xt.shape[1]), dtype=F32)  # w*q*x and w*q*q, summed together

    def sums(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _KV.take(best_index_iq4(inv[None, :] * xt))
        np.multiply(wt, q, out=stacked[:, 1])  # C: w*q*xb[j] == (w*q)*x, w*q*q == (w*q)*q
        np.multiply(stacked[:, 1], xt, out=stacked[:, 0])
        stacked[:, 1] *= q
        sumqx, sumq2 = seq_sum(stacked)
        return sumqx, sumq2

    with np.errstate(all="ignore"):
        d = (-safe_max) / _KV[0]
        sumqx, sumq2 = sums(F32(1.0) / d)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0.0)).astype(F32)
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            inv = F32(itry + int(KVALUES_IQ4NL[0])) / safe_max
            sumqx, sumq2 = sums(inv)
            accept = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            if accept.any():
                new_d = sumqx / sumq2
                d = np.where(accept, new_d, d)
                best = np.where(accept, new_d * sumqx, best)
    return np.where(zero, F32(0.0), d).astype(F32)


def requantize(xt: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Final indices (32, B): best_index(x * (scale ? 1/scale : 0)) with the unrounded float scale."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(scale != 0, F32(1.0) / scale, F32(0.0)).astype(F32)
    return best_index_iq4(xt * inv[None, :])


class IQ4_NL(QuantType, qtype=GGMLQuantizationType.IQ4_NL):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            xt = transposed_blocks(part, 32)
            im = None if imatrix is None else transposed_imatrix(imatrix, part.shape[0], 32)
            scale = iq4_block_scales(xt, iq4_weights(xt, 32, im))
            out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(scale)
            out[:, 2:] = pack_nibbles(requantize(xt, scale))
            return out.reshape(part.shape[0], -1)

        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel, SEARCH_SLICE_ELEMENTS)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        return (d * _KV[unpack_nibbles(blocks[:, 2:])]).reshape(data.shape[0], ncols)
