"""Q4_1 (32-blocks, fp16 scale + fp16 min, 4-bit unsigned quants).

Reference path = quantize_row_q4_1_ref; imatrix path = quantize_row_q4_1_impl, i.e. make_qkx3_quants
(rmin -0.9, rdelta 0.05, nstep 36, squared error), implemented here and reused by Q5_1.
All kernels take transposed blocks xt (32, B); see q4_0.py.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants._common import nearest_int
from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    SEARCH_SLICE_ELEMENTS,
    fix_zero_sign,
    half_bytes,
    impl_weights,
    in_row_slices,
    pack_nibbles,
    read_half,
    seq_sum,
    seq_sum_from_first,
    transposed_blocks,
    unpack_nibbles,
    zero_codes_where_inverse_overflows,
)


def first_min_max(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (v < min) min = v; if (v > max) max = v;` scan per block (zero signs included)."""
    mn = fix_zero_sign(xt.min(axis=0), xt)
    mx = fix_zero_sign(xt.max(axis=0), xt)
    return mn, mx


def minmax_ref_codes(xt: np.ndarray, nmax: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q4_1_ref / q5_1_ref: d = (max-min)/nmax, q = (uint)((x-min)*id + 0.5), in place on xt."""
    mn, mx = first_min_max(xt)
    d = (mx - mn) / F32(nmax)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    with np.errstate(invalid="ignore"):
        xt -= mn[None, :]
        xt *= inv[None, :]
        xt += F32(0.5)
        if clamp:  # MIN(nmax, trunc(v)) == trunc(min(v, nmax)) for v >= 0
            np.minimum(xt, F32(nmax), out=xt)
        q = zero_codes_where_inverse_overflows(xt.astype(np.uint8), inv)
    return d.astype(F32), mn, q


def make_qkx3_quants(
    xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float = -0.9, rdelta: float = 0.05, nstep: int = 36
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised make_qkx3_quants(n, nmax, x, weights, L, &the_min, ..., use_mad=false), xt/wt (n, B).

    Returns (scale, min, L (n, B)) with `min` the (non-positive) offset that the C returns negated in
    the_min, so the stored fp16 m is `min` itself. The running min is updated whenever a candidate wins
    and later candidates use it (both in x - min and in max - min).
    """
    n, nblocks = xt.shape
    mn, mx = first_min_max(xt)
    sum_w = seq_sum_from_first(wt)  # C starts these two from w[0], w[0]*x[0] (not from 0.0f)
    sum_x = seq_sum_from_first(wt * xt)
    mn = np.where(mn > 0, F32(0.0), mn).astype(F32)
    degenerate = mx <= mn
    fnmax = F32(nmax)

    def levels(iscale: np.ndarray, cur_min: np.ndarray) -> np.ndarray:
        """MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))."""
        lv = xt - cur_min[None, :]
        lv *= iscale[None, :]
        overflow = ~np.isfinite(iscale)  # max - min below ~2^-126: replicate the bit trick on inf/NaN
        exact = nearest_int(lv[:, overflow]).astype(F32) if overflow.any() else None
        np.rint(lv, out=lv)  # == nearest_int while |v| < 2^22, i.e. whenever iscale is finite
        if exact is not None:
            lv[:, overflow] = exact
        np.minimum(lv, fnmax, out=lv)
        return np.maximum(lv, F32(0.0), out=lv)

    def sq_error(scale: np.ndarray, cur_min: np.ndarray, lv: np.ndarray) -> np.ndarray:
        """Σ w * (scale*L + min - x)^2, sequential."""
        diff = lv * scale[None, :]
        diff += cur_min[None, :]
        diff -= xt
        diff *= diff
        diff *= wt
        return seq_sum(diff)

    stacked = np.empty((n, 3, nblocks), dtype=F32)  # w*l, w*l*l, w*l*x summed in one sequential pass
    with np.errstate(all="ignore"):
        span = np.where(degenerate, F32(1.0), mx - mn)
        iscale = fnmax / span
        scale = (F32(1.0) / iscale).astype(F32)
        # The winning L is recomputed at the end from the winning (iscale, min-at-that-time).
        best_iscale, best_level_min = iscale, mn
        best_mad = sq_error(scale, mn, levels(iscale, mn))
        for step in range(nstep + 1):
            iscale = ((F32(rmin) + F32(rdelta) * F32(step)) + fnmax) / (mx - mn)
            lv = levels(iscale, mn)
            np.multiply(wt, lv, out=stacked[:, 0])
            np.multiply(stacked[:, 0], lv, out=stacked[:, 1])
            np.multiply(stacked[:, 0], xt, out=stacked[:, 2])
            sum_l, sum_l2, sum_xl = seq_sum(stacked)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0.0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            mad = sq_error(this_scale, this_min, lv)
            accept = (det > 0) & (mad < best_mad) & ~degenerate
            if accept.any():
                best_iscale = np.where(accept, iscale, best_iscale)
                best_level_min = np.where(accept, mn, best_level_min)
                best_mad = np.where(accept, mad, best_mad)
                scale = np.where(accept, this_scale, scale)
                mn = np.where(accept, this_min, mn)
        codes = levels(best_iscale, best_level_min).astype(np.uint8)
    scale = np.where(degenerate, F32(0.0), scale).astype(F32)
    codes[:, degenerate] = 0
    return scale, mn.astype(F32), codes


class Q4_1(QuantType, qtype=GGMLQuantizationType.Q4_1):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            xt = transposed_blocks(part, 32)
            if imatrix is None:
                d, m, qt = minmax_ref_codes(xt, 15, clamp=True)
            else:
                d, m, qt = make_qkx3_quants(xt, impl_weights(part, imatrix), 15)
            out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(d)
            out[:, 2:4] = half_bytes(m)
            out[:, 4:] = pack_nibbles(qt)
            return out.reshape(part.shape[0], -1)

        search = None if imatrix is None else SEARCH_SLICE_ELEMENTS
        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel, search)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        m = read_half(blocks, 2)
        q = unpack_nibbles(blocks[:, 4:]).astype(F32)
        return (q * d + m).reshape(data.shape[0], ncols)
