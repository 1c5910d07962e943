"""Q4_0 (32-blocks, fp16 scale, 4-bit signed quants) and the block helpers shared by the 32-block types.

Reference path (no imatrix) = quantize_row_q4_0_ref; with an imatrix = quantize_row_q4_0_impl, whose
make_qx_quants search is implemented here (Q5_0 reuses it). Byte layout: formats/ggml-blocks.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


# ---------------------------------------------------------------- block helpers (shared by the 32-block types)
#
# Every quantizer works on TRANSPOSED blocks: xt has shape (block, nblocks), so xt[j] is element j of every
# block, contiguous. Per-block reductions (max/min over 32 elements) and C's sequential per-element
# accumulations then run along axis 0 over long contiguous rows, which is ~10x faster in NumPy than
# reducing a short inner axis, and the transposition itself costs about one such reduction.

# Rows are fed to the NumPy kernels in slices of about this many elements: the temporaries then stay in
# the CPU cache (measured ~1.4x faster than 1M-element slices on the reference paths).
_SLICE_ELEMENTS = 1 << 16
# The scale searches (imatrix paths, IQ4) run ~20-40 candidates of many small vector operations per
# slice: longer vectors amortise NumPy's per-call overhead (measured best at 256K elements).
SEARCH_SLICE_ELEMENTS = 1 << 18


def in_row_slices(
    rows: np.ndarray,
    row_bytes: int,
    kernel: Callable[[np.ndarray], np.ndarray],
    slice_elements: int | None = None,
) -> np.ndarray:
    """Apply `kernel` (rows -> (nrows, row_bytes) uint8) to cache-sized row slices of `rows`."""
    nrows, ncols = rows.shape
    step = max(1, (slice_elements or _SLICE_ELEMENTS) // ncols)
    if step >= nrows:
        return kernel(rows)
    out = np.empty((nrows, row_bytes), dtype=np.uint8)
    for r0 in range(0, nrows, step):
        out[r0 : r0 + step] = kernel(rows[r0 : r0 + step])
    return out


def as_blocks(rows: np.ndarray, block: int) -> np.ndarray:
    """(nrows, ncols) float32 -> (nblocks, block), blocks in memory order (for the 256-block types)."""
    return np.ascontiguousarray(rows, dtype=F32).reshape(-1, block)


def transposed_blocks(rows: np.ndarray, block: int) -> np.ndarray:
    """(nrows, ncols) -> contiguous float32 (block, nblocks): column b is block b in memory order."""
    return np.ascontiguousarray(np.asarray(rows, dtype=F32).reshape(-1, block).T)


def transposed_imatrix(imatrix: np.ndarray, nrows: int, block: int) -> np.ndarray:
    """Per-column weights (ncols,) laid out like transposed_blocks of an (nrows, ncols) tensor."""
    per_row = np.asarray(imatrix, dtype=F32).reshape(-1, block).T
    return np.ascontiguousarray(np.tile(per_row, (1, nrows)))


def seq_sum(terms: np.ndarray, axis: int = 0) -> np.ndarray:
    """C's `float s = 0; for (i...) s += t[i];` along `axis`: strictly sequential float32.

    axis 0 (the element axis of transposed blocks): one vectorised add per element, across all blocks;
    `0.0 + t[0]` reproduces C's start (it maps -0.0 to +0.0). Other axes (whole-row sums over the
    contiguous axis): ufunc.accumulate, a left-to-right recurrence (never pairwise), plus +0.0 at the end,
    which differs from starting at 0.0f only in the sign of an all-(-0.0) sum.
    """
    if axis == 0:
        acc = terms[0] + F32(0.0)
        for i in range(1, terms.shape[0]):
            acc += terms[i]
        return acc
    acc = np.add.accumulate(terms, axis=axis, dtype=F32)
    return np.take(acc, -1, axis=axis) + F32(0.0)


def seq_sum_from_first(terms: np.ndarray) -> np.ndarray:
    """C's `float s = t[0]; for (i = 1...) s += t[i];` along axis 0 (no 0.0f start)."""
    acc = terms[0].copy()
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def signed_absmax(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, vmax) per block: C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` starting from 0.

    vmax is the signed value of the FIRST element of largest magnitude; +0.0 for an all-zero block.
    """
    mx = xt.max(axis=0)
    mn = xt.min(axis=0)
    neg_mn = -mn
    amax = np.maximum(mx, neg_mn)
    vmax = np.where(mx > neg_mn, mx, mn)
    # +a and -a both present: whichever comes first wins (frequent with bf16-rounded weights).
    tie = (mx == neg_mn) & (amax > 0)
    if tie.any():
        sub = xt[:, tie]
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        vmax[tie] = sub[first, np.arange(sub.shape[1])]
    vmax[amax == 0] = F32(0.0)
    return amax.astype(F32), vmax.astype(F32)


def fix_zero_sign(values: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """A C min/max scan with strict comparisons keeps the FIRST zero it meets when the extreme is 0, so
    its sign is that element's sign; NumPy's min/max leave the sign of such a zero unspecified."""
    zero = values == 0
    if zero.any():
        sub = xt[:, zero]
        first = np.argmax(sub == 0, axis=0)
        values[zero] = sub[first, np.arange(sub.shape[1])]
    return values


def zero_codes_where_inverse_overflows(codes: np.ndarray, inv: np.ndarray, fill: int = 0) -> np.ndarray:
    """A scale below ~2^-128 has an infinite float32 inverse; the C code then converts ±inf/NaN to an
    integer, which x86-64 GCC does with cvttss2si (result 0x80000000, low byte 0): every code of such a
    block is `fill` (0 for the (int8_t)/(uint8_t) casts). NumPy's cast of inf/NaN is undefined, so the
    codes of those (transposed) blocks are set explicitly."""
    overflow = ~np.isfinite(inv)
    if overflow.any():
        codes[:, overflow] = fill
    return codes


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float32 (n,) -> (n, 2) uint8: the little-endian fp16 (RNE, == GGML_FP32_TO_FP16 for non-NaN)."""
    return np.ascontiguousarray(values, dtype=F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def read_half(data: np.ndarray, offset: int) -> np.ndarray:
    """(nblocks, type_size) uint8 -> float32 (nblocks, 1) of the fp16 at byte `offset`."""
    return np.ascontiguousarray(data[:, offset : offset + 2]).view("<f2").astype(F32)


def pack_nibbles(qt: np.ndarray) -> np.ndarray:
    """Transposed codes (32, B) 0..15 (higher bits ignored) -> (B, 16): element j low nibble, j+16 high."""
    qt = qt.astype(np.uint8, copy=False)
    return ((qt[:16] & np.uint8(0x0F)) | (qt[16:] << np.uint8(4))).T


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(nblocks, 16) packed bytes -> (nblocks, 32) uint8 codes."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


_BIT_SHIFTS = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


def pack_bit4(qt: np.ndarray) -> np.ndarray:
    """Transposed 5-bit codes (32, B) -> (B, 4) bytes of the LE uint32 whose bit j is bit 4 of element j."""
    bits = ((qt.astype(np.uint8, copy=False) >> np.uint8(4)) & np.uint8(1)).reshape(4, 8, -1)
    return np.bitwise_or.reduce(bits << _BIT_SHIFTS, axis=1).T


def unpack_bit4(qh: np.ndarray) -> np.ndarray:
    """Inverse of pack_bit4: (nblocks, 4) -> (nblocks, 32) uint8 holding 0x10 or 0."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def impl_weights(rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1 `_impl` weights, transposed (32, B): qw[j] * sqrtf(sigma2 + x[j]*x[j]) with
    sigma2 = sequential Σx² over the WHOLE row / n_per_row."""
    nrows, ncols = rows.shape
    sigma2 = seq_sum(rows * rows, axis=1) / F32(ncols)
    xt = transposed_blocks(rows, 32)
    sig = np.repeat(sigma2, ncols // 32)[None, :]
    return transposed_imatrix(imatrix, nrows, 32) * np.sqrt(sig + xt * xt)


# ---------------------------------------------------------------- make_qx_quants (rmse_type 1, weights given)


def make_qx_quants(xt: np.ndarray, nmax: int, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on transposed blocks (n, B).

    Returns (scale (B,), L (n, B) uint8 in 0..2*nmax-1). Candidate iscales are evaluated for all blocks at
    once; the winning iscale is remembered and L recomputed from it once at the end (same result as the C,
    which recomputes L whenever a candidate wins).
    """
    amax, vmax = signed_absmax(xt)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1.0), vmax)
    wx = wt * xt  # C: w*x[i]*l == (w*x[i])*l
    lo, hi = F32(-nmax), F32(nmax - 1)
    stacked = np.empty((xt.shape[0], 2, xt.shape[1]), dtype=F32)  # w*x*l and w*l*l, summed together

    def levels(iscale: np.ndarray) -> np.ndarray:
        # nearest_int == rint for |v| < 2^22 (here |v| <= nmax + 1); clamp as MAX(-nmax, MIN(nmax-1, l)).
        lv = xt * iscale[None, :]
        np.rint(lv, out=lv)
        np.minimum(lv, hi, out=lv)
        return np.maximum(lv, lo, out=lv)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv = levels(iscale)
        np.multiply(wx, lv, out=stacked[:, 0])
        np.multiply(wt, lv, out=stacked[:, 1])
        stacked[:, 1] *= lv
        sumlx, suml2 = seq_sum(stacked)
        return sumlx, suml2

    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / safe_max
        best_iscale = iscale
        sumlx, suml2 = sums(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0.0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / safe_max
            sumlx, suml2 = sums(iscale)
            accept = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if accept.any():
                new_scale = sumlx / suml2
                scale = np.where(accept, new_scale, scale)
                best = np.where(accept, new_scale * sumlx, best)
                best_iscale = np.where(accept, iscale, best_iscale)
        codes = (levels(best_iscale) + F32(nmax)).astype(np.uint8)
    scale = np.where(zero, F32(0.0), scale).astype(F32)
    codes[:, zero] = 0
    return scale, codes


# ---------------------------------------------------------------- Q4_0


def absmax_ref_codes(xt: np.ndarray, divisor: float, offset: float, top: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q4_0_ref / q5_0_ref: d = vmax/divisor, q = MIN(top, (int8)(x*id + offset)).

    Works in place on `xt` (transposed blocks, a private copy) and returns (d, codes (32, B) uint8).
    """
    _, vmax = signed_absmax(xt)
    d = vmax / F32(divisor)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    # x*id + offset is >= 0 here, so the float->int8 truncation is a truncation toward zero.
    with np.errstate(invalid="ignore"):
        np.multiply(xt, inv[None, :], out=xt)
        xt += F32(offset)
        # MIN(top, trunc(v)) == trunc(min(v, top)) for v >= 0; clamping in float32 is the faster pass
        np.minimum(xt, F32(top), out=xt)
        q = zero_codes_where_inverse_overflows(xt.astype(np.uint8), inv)
    return d.astype(F32), q


class Q4_0(QuantType, qtype=GGMLQuantizationType.Q4_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            xt = transposed_blocks(part, 32)
            if imatrix is None:
                d, qt = absmax_ref_codes(xt, -8.0, 8.5, 15)
            else:
                d, qt = make_qx_quants(xt, 8, impl_weights(part, imatrix))
            out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(d)
            out[:, 2:] = pack_nibbles(qt)
            return out.reshape(part.shape[0], -1)

        search = None if imatrix is None else SEARCH_SLICE_ELEMENTS
        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel, search)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
