"""The ggml-quants.c routines that more than one quant type uses, each ported once and bit for bit.

Type modules (q4_0.py, q4_k.py, ...) hold only their own block layout and dispatch; everything they share
lives here: row slicing, block layouts, C's sequential sums and first-occurrence extrema, ggml's rounding,
fp16 and nibble packing, the scale searches (make_qx_quants, make_q3_quants, make_qkx2/qkx3_quants,
make_qp_quants), and the per-family pieces several types run unchanged (Q4_0/Q5_0 and Q4_1/Q5_1
reference codes, the `_impl` weights, Q4_K/Q5_K scales and mins, the IQ4_NL/IQ4_XS search, TQ ternary codes).

Layout. Every routine works on a batch of independent groups (blocks, sub-blocks or super-blocks) laid out
element-major: `x` has shape (n, B), row i holding element i of all B groups, so a column is one group
(`transposed_blocks`). Element-wise work runs on whole (n, B) arrays; anything ggml accumulates runs as a
Python loop over the n rows adding contiguous B-vectors in float32, which is exactly C's sequential
left-to-right float sum (NumPy's np.sum is pairwise and differs). Per-block reductions along axis 0 over
long contiguous rows are also ~10x faster in NumPy than reducing a short inner axis.

Conventions that make the port exact (formats/ggml-kquants.md):
* all arithmetic in float32 with np.float32 constants, levels cast to float32 before multiplying;
* C's association order is kept: `w*x*l` is `(w*x)*l`, `scale*L + min - x` is `((scale*L)+min)-x`;
* strict comparisons and first-occurrence extrema, with the signed value (and the sign of a zero) kept;
* `nearest_int` is ggml's bit trick (it returns garbage rather than saturating for |v| >= 2^22 or NaN,
  and ggml's later clamps see that garbage, so it is reproduced). The hot candidate loops use the cheaper
  float `np.rint` + clamp instead, only where |v| < 2^22 is proven or checked (`rint_levels`);
* every C branch is a mask; degenerate groups run through the arithmetic under np.errstate and are
  overwritten with ggml's special result at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantcli.quants.base import QuantType

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
QK_K = 256  # elements per K-quant / IQ4_XS / TQ super-block

# ---------------------------------------------------------------- row slicing

# Rows are fed to the NumPy kernels in slices of about this many elements: the temporaries then stay in
# the CPU cache (measured ~1.4x faster than the 1M-element chunks base.quantize passes in).
SLICE_ELEMENTS = 1 << 16
# The scale searches (imatrix paths, IQ4, K-quants) run ~20-40 candidates of many small vector operations
# per slice: longer vectors amortise NumPy's per-call overhead (measured best at 256K elements).
SEARCH_SLICE_ELEMENTS = 1 << 18


def in_row_slices(
    rows: np.ndarray,
    row_bytes: int,
    kernel: Callable[[np.ndarray], np.ndarray],
    slice_elements: int = SLICE_ELEMENTS,
) -> np.ndarray:
    """Apply `kernel` (rows -> (nrows, row_bytes) uint8) to cache-sized row slices of `rows`.

    Every ggml quantizer is row-local, so the bytes do not depend on where the slices are cut.
    """
    nrows, ncols = rows.shape
    step = max(1, slice_elements // ncols)
    if step >= nrows:
        return kernel(rows)
    out = np.empty((nrows, row_bytes), dtype=np.uint8)
    for r0 in range(0, nrows, step):
        out[r0 : r0 + step] = kernel(rows[r0 : r0 + step])
    return out


class SlicedQuantType(QuantType):
    """A type whose NumPy quantizer runs `quantize_piece` on cache-sized row slices."""

    # False where the no-imatrix path is a plain reference formula (short slices suit it); imatrix paths
    # and the other types' every path are scale searches, which want longer vectors.
    searches_without_imatrix: ClassVar[bool] = True

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 (nrows, ncols) -> uint8 (nrows, row_bytes), like quantize_rows, for one slice."""
        raise NotImplementedError

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        search = imatrix is not None or cls.searches_without_imatrix
        # The sizes are read at call time: tests shrink them to cut uneven slices.
        slice_elements = SEARCH_SLICE_ELEMENTS if search else SLICE_ELEMENTS
        return in_row_slices(
            rows, cls.row_bytes(rows.shape[1]), lambda piece: cls.quantize_piece(piece, imatrix), slice_elements
        )


class LevelGrid:
    """The values a row of encoded blocks can hold, from their stored parameters: element e of block b
    decodes from its stored level through the parameters of sub-block e // sub_size, in float32 exactly as
    the type's to_float computes it. Two kinds: a step times an integer (AffineGrid: Q4_0..Q8_0,
    Q2_K..Q6_K) and a scale times a lookup table (TableGrid: IQ4_NL, IQ4_XS)."""

    sub_size: int

    def values(self, levels: np.ndarray, first: int = 0) -> np.ndarray:
        """float32 values of stored levels (nblocks, k): elements first..first+k-1 of every block."""
        raise NotImplementedError

    def nearest(self, x: np.ndarray, element: int, keep: np.ndarray) -> np.ndarray:
        """The stored level (nblocks,) int32 whose value is nearest x (nblocks,) for element `element` of
        every block; `keep`'s level where the sub-block's scale is 0 (every level decodes alike there)."""
        raise NotImplementedError


@dataclass(frozen=True)
class AffineGrid(LevelGrid):
    """Element e of block b decodes as `step[b, s] * (level - zero)`, plus `offset[b, s]` where the type
    has a min, with s = e // sub_size; stored levels lie in [level_min, level_max]."""

    step: np.ndarray  # float32 (nblocks, n_sub)
    offset: np.ndarray | None  # float32 (nblocks, n_sub), added after the product; None: no min
    sub_size: int
    zero: int  # the stored level of code 0 (8 for Q4_0, 0 for the types with a min and for Q8_0)
    level_min: int
    level_max: int

    def values(self, levels: np.ndarray, first: int = 0) -> np.ndarray:
        nb, k = levels.shape
        q = (levels.astype(np.int32) - np.int32(self.zero)).astype(F32)
        if first == 0 and k == self.step.shape[1] * self.sub_size:
            # A whole block: broadcast per sub-block (the dequantizer's shape, no per-element copies).
            q = q.reshape(nb, -1, self.sub_size)
            out = self.step[:, :, None] * q
            if self.offset is not None:
                out += self.offset[:, :, None]
            return out.reshape(nb, k)
        sub = (first + np.arange(k)) // self.sub_size
        out = self.step[:, sub] * q
        if self.offset is not None:
            out += self.offset[:, sub]
        return out

    def nearest(self, x: np.ndarray, element: int, keep: np.ndarray) -> np.ndarray:
        # The grid is evenly spaced, so rounding the position and clamping it to the stored range is the
        # nearest representable value.
        sub = element // self.sub_size
        step = self.step[:, sub].astype(np.float64)
        offset = 0.0 if self.offset is None else self.offset[:, sub].astype(np.float64)
        live = step != 0
        level = np.rint((x - offset) / np.where(live, step, 1.0)) + self.zero
        np.clip(level, self.level_min, self.level_max, out=level)
        return np.where(live, level.astype(np.int32), keep)


@dataclass(frozen=True)
class TableGrid(LevelGrid):
    """Element e of block b decodes as `scale[b, s] * table[level]`, s = e // sub_size (IQ4_NL's
    kvalues: 16 non-uniform values; IQ4_XS's scale is its 6-bit sub-scale times the fp16 super-scale)."""

    scale: np.ndarray  # float32 (nblocks, n_sub)
    table: np.ndarray  # float32 (n_levels,): the value of each stored level before scaling
    sub_size: int

    def values(self, levels: np.ndarray, first: int = 0) -> np.ndarray:
        nb, k = levels.shape
        q = self.table[levels]
        if first == 0 and k == self.scale.shape[1] * self.sub_size:
            return (self.scale[:, :, None] * q.reshape(nb, -1, self.sub_size)).reshape(nb, k)
        return self.scale[:, (first + np.arange(k)) // self.sub_size] * q

    def nearest(self, x: np.ndarray, element: int, keep: np.ndarray) -> np.ndarray:
        # The table is not evenly spaced: every level's value, computed as to_float does, is a candidate
        # (the first of two equally near ones wins).
        scale = self.scale[:, element // self.sub_size]
        candidates = (scale[:, None] * self.table[None, :]).astype(np.float64)
        level = np.abs(x[:, None] - candidates).argmin(axis=1).astype(np.int32)
        return np.where(scale != 0, level, keep)


class GridQuantType(SlicedQuantType):
    """A type whose blocks are parameters plus one stored level per element on a LevelGrid: affine
    (Q4_0..Q8_0, Q2_K..Q6_K) or a lookup table (IQ4_NL, IQ4_XS). The three methods below are the only
    readers and writers of its levels and parameters: the dequantizer, the quantizer's packing and GPTQ on
    the type's grid (gptq_ggml.py) all go through them."""

    level_min: ClassVar[int]  # the stored levels' range (Q8_0's are signed bytes)
    level_max: ClassVar[int]

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        """(nblocks, type_size) uint8 -> the grid their parameters define."""
        raise NotImplementedError

    @classmethod
    def affine_grid(cls, step: np.ndarray, offset: np.ndarray | None, sub_size: int, zero: int) -> AffineGrid:
        """An affine `grid` over the type's stored level range."""
        return AffineGrid(step, offset, sub_size, zero, cls.level_min, cls.level_max)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        """(nblocks, type_size) uint8 -> stored levels (nblocks, block_size), an integer dtype."""
        raise NotImplementedError

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        """Store levels (nblocks, block_size), each in [level_min, level_max], into blocks' level bytes in
        place; the parameter bytes are left as they are."""
        raise NotImplementedError

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = np.ascontiguousarray(data).reshape(-1, cls.type_size)
        return cls.grid(blocks).values(cls.levels(blocks)).reshape(data.shape[0], ncols)


# ---------------------------------------------------------------- block layouts


def as_blocks(rows: np.ndarray, block: int) -> np.ndarray:
    """(nrows, ncols) float32 -> (nblocks, block), blocks in memory order."""
    return np.ascontiguousarray(rows, dtype=F32).reshape(-1, block)


def transposed_blocks(rows: np.ndarray, block: int) -> np.ndarray:
    """(nrows, ncols) -> contiguous float32 (block, nblocks): column b is block b in memory order."""
    return np.ascontiguousarray(np.asarray(rows, dtype=F32).reshape(-1, block).T)


def transposed_imatrix(imatrix: np.ndarray, nrows: int, block: int) -> np.ndarray:
    """Per-column weights (ncols,) laid out like transposed_blocks of an (nrows, ncols) tensor."""
    per_row = np.asarray(imatrix, dtype=F32).reshape(-1, block).T
    return np.ascontiguousarray(np.tile(per_row, (1, nrows)))


# ---------------------------------------------------------------- C's sums and extrema


def seq_sum(terms: np.ndarray, axis: int = 0) -> np.ndarray:
    """C's `float s = 0; for (i...) s += t[i];` along `axis`: strictly sequential float32.

    axis 0 (the element axis): one vectorised add per element, across all groups (and across any further
    axes, e.g. several sums stacked as (n, k, B)); `t[0] + 0.0` reproduces C's start (it maps -0.0 to
    +0.0). Other axes (whole-row sums over the contiguous axis): ufunc.accumulate, a left-to-right
    recurrence (never pairwise), plus +0.0 at the end, which differs from starting at 0.0f only in the
    sign of an all-(-0.0) sum.
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


def signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, vmax) per group: C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` starting from 0.

    vmax is the signed value of the FIRST element of largest magnitude; +0.0 for an all-zero group.
    """
    mx = x.max(axis=0)
    mn = x.min(axis=0)
    neg_mn = -mn
    amax = np.maximum(mx, neg_mn)
    vmax = np.where(mx > neg_mn, mx, mn)
    # +a and -a both present: whichever comes first wins (frequent with bf16-rounded weights).
    tie = (mx == neg_mn) & (amax > 0)
    if tie.any():
        sub = x[:, tie]
        first = np.argmax(np.abs(sub) == amax[tie], axis=0)
        vmax[tie] = sub[first, np.arange(sub.shape[1])]
    vmax[amax == 0] = F32(0.0)
    return amax.astype(F32), vmax.astype(F32)


def fix_zero_sign(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A C min/max scan with strict comparisons keeps the FIRST zero it meets when the extreme is 0, so
    its sign is that element's sign; NumPy's min/max leave the sign of such a zero unspecified."""
    zero = values == 0
    if zero.any():
        sub = x[:, zero]
        first = np.argmax(sub == 0, axis=0)
        values[zero] = sub[first, np.arange(sub.shape[1])]
    return values


def first_min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = max = x[0]; if (v < min) min = v; if (v > max) max = v;` per group (zero signs included)."""
    return fix_zero_sign(x.min(axis=0), x), fix_zero_sign(x.max(axis=0), x)


def running_max(values: np.ndarray) -> np.ndarray:
    """ggml's `if (s > m) m = s;` over axis 0 from m = 0 (keeps +0.0 unless a positive value beats it)."""
    m = np.zeros(values.shape[1:], dtype=F32)
    for v in values:
        m = np.where(v > m, v, m)
    return m


# ---------------------------------------------------------------- rounding

_MAGIC = F32(12582912.0)  # 1.5 * 2**23


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: float32 round-half-even via the 1.5*2^23 bit trick (int32 result)."""
    y = (np.asarray(x, dtype=F32) + _MAGIC).view(np.int32)
    return (y & 0x007FFFFF) - 0x00400000


def clamped_levels(v: np.ndarray, lo: int | None, hi: int) -> np.ndarray:
    """`MAX(lo, MIN(hi, nearest_int(v)))` as int32 (lo=None: clamp from above only)."""
    q = nearest_int(v)
    np.minimum(q, hi, out=q)
    if lo is not None:
        np.maximum(q, lo, out=q)
    return q


def rint_levels(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """In place: v <- clamp(rint(v), lo, hi) as float32 levels.

    Equal to `clamped_levels` wherever |v| < 2^22, where ggml's nearest_int is exactly round-half-even;
    callers use it only where that bound is proven (or checked), because it is half the work.
    """
    np.rint(v, out=v)
    np.maximum(v, F32(lo), out=v)
    np.minimum(v, F32(hi), out=v)
    return v


def roundf_inplace(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero) of float32 `v`, in place; returns v.

    |v| = f + frac with f = floor(|v|): frac and 2*frac are exact, so f + floor(2*frac) rounds half up
    exactly (np.rint is half-to-even; trunc(v + 0.5) is wrong for 0.49999997).
    """
    sign_src = v.copy()
    np.abs(v, out=v)
    whole = np.floor(v)
    v -= whole
    v *= F32(2.0)
    np.floor(v, out=v)
    v += whole
    return np.copysign(v, sign_src, out=v)


def zero_codes_where_inverse_overflows(codes: np.ndarray, inv: np.ndarray, fill: int = 0) -> np.ndarray:
    """A scale below ~2^-128 has an infinite float32 inverse; the C code then converts ±inf/NaN to an
    integer, which x86-64 GCC does with cvttss2si (result 0x80000000, low byte 0): every code of such a
    block is `fill` (0 for the (int8_t)/(uint8_t) casts). NumPy's cast of inf/NaN is undefined, so the
    codes of those (transposed) blocks are set explicitly."""
    overflow = ~np.isfinite(inv)
    if overflow.any():
        codes[:, overflow] = fill
    return codes


# ---------------------------------------------------------------- fp16 and bit packing


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float (n,) -> (n, 2) uint8: the little-endian fp16 (RNE, == GGML_FP32_TO_FP16 for non-NaN)."""
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


# ---------------------------------------------------------------- 32-block reference codes and weights


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


def minmax_ref_codes(xt: np.ndarray, nmax: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q4_1_ref / q5_1_ref: d = (max-min)/nmax, q = (uint)((x-min)*id + 0.5), in place on xt.

    Returns (d, min, codes (32, B) uint8); `clamp` is q4_1's MIN(nmax, .) (q5_1 stores the value as is).
    """
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


def impl_weights(rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1 `_impl` weights, transposed (32, B): qw[j] * sqrtf(sigma2 + x[j]*x[j]) with
    sigma2 = sequential Σx² over the WHOLE row / n_per_row."""
    nrows, ncols = rows.shape
    sigma2 = seq_sum(rows * rows, axis=1) / F32(ncols)
    xt = transposed_blocks(rows, 32)
    sig = np.repeat(sigma2, ncols // 32)[None, :]
    return transposed_imatrix(imatrix, nrows, 32) * np.sqrt(sig + xt * xt)


def symmetric_block_codes(rows: np.ndarray, imatrix: np.ndarray | None, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q4_0 (nmax 8) / q5_0 (nmax 16): `_ref` without an imatrix, `_impl` (make_qx_quants)
    with one. Returns (d (B,), codes (32, B) uint8 0..2*nmax-1) for the B 32-blocks of `rows`."""
    xt = transposed_blocks(rows, 32)
    if imatrix is None:
        return absmax_ref_codes(xt, -nmax, nmax + 0.5, 2 * nmax - 1)
    return make_qx_quants(xt, nmax, impl_weights(rows, imatrix))


def min_block_codes(
    rows: np.ndarray, imatrix: np.ndarray | None, nmax: int, clamp_ref: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q4_1 (nmax 15) / q5_1 (nmax 31): `_ref` without an imatrix, `_impl` (make_qkx3_quants,
    rmin -0.9, rdelta 0.05, 36 steps, squared error) with one. Returns (d, m, codes (32, B) uint8), m <= 0
    being the stored min (the C's -the_min)."""
    xt = transposed_blocks(rows, 32)
    if imatrix is None:
        return minmax_ref_codes(xt, nmax, clamp_ref)
    d, codes, the_min = make_qkx_quants(xt, impl_weights(rows, imatrix), nmax, -0.9, 0.05, 36, False)
    return d, -the_min, codes


def kquant_impl_weights(blocks: np.ndarray, xs: np.ndarray, qw: np.ndarray, sigma_factor: float) -> np.ndarray:
    """The K-quant `_impl` weights qw * sqrtf(sigma2 + x*x), element-major like `xs` (sub-blocks of one
    super-block are adjacent columns), with sigma2 = (sigma_factor * sequential Σx² over the 256-element
    super-block) / 256: factor 2 for Q3_K..Q5_K; Q2_K has no factor (ggml writes plain `sumx2/QK_K`)."""
    xb = blocks.T  # (256, NB) view: sequential sum over all 256 elements of each block
    total = seq_sum(xb * xb)
    if sigma_factor != 1:
        total = F32(sigma_factor) * total
    sigma2 = total / F32(QK_K)
    per_block = xs.shape[1] // blocks.shape[0]
    return qw * np.sqrt(np.repeat(sigma2, per_block) + xs * xs)


# ---------------------------------------------------------------- scale searches


def make_qx_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw): symmetric levels -nmax..nmax-1.

    x: (n, B) float32; weights: (n, B) or None (then x*x). Returns (scale (B,), L (n, B) uint8 codes
    0..2*nmax-1; all-zero groups get L = 0, not the zero level, and scale 0). Candidate iscales are
    evaluated for all groups at once; the winning iscale is remembered and L recomputed from it once at
    the end (same result as the C, which recomputes L whenever a candidate wins).
    """
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1.0), vmax)
    w = x * x if weights is None else weights
    wx = w * x  # C: w*x[i]*l == (w*x[i])*l
    lo, hi = F32(-nmax), F32(nmax - 1)
    stacked = np.empty((x.shape[0], 2, x.shape[1]), dtype=F32)  # w*x*l and w*l*l, summed together

    def levels(iscale: np.ndarray) -> np.ndarray:
        # |iscale*x| <= nmax + 0.9 in every group that is not all-zero (|x| <= |vmax|), so rint equals
        # nearest_int; clamp as MAX(-nmax, MIN(nmax-1, l)).
        return rint_levels(x * iscale[None, :], lo, hi)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv = levels(iscale)
        np.multiply(wx, lv, out=stacked[:, 0])
        np.multiply(w, lv, out=stacked[:, 1])
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


def refine_levels(
    x: np.ndarray,
    w: np.ndarray,
    levels: np.ndarray,
    sumlx: np.ndarray,
    suml2: np.ndarray,
    lo: int | None,
    hi: int,
    unsigned_store: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's up to 5 coordinate-descent passes of make_q3_quants (unsigned_store=False) and make_qp_quants
    (unsigned_store=True: levels live in uint8, clamped from above only, and `sl2 > 0` is required before
    proposing instead of after).

    Each pass visits the elements in order and re-picks level i as nearest_int(x*sl2/slx) from the sums
    without it, keeping it only if it raises sumlx^2/suml2; the sums update immediately. A group whose pass
    changed nothing is at a fixed point (a further pass would recompute the same values), so after each
    pass only the groups that changed are carried on: equal to ggml's per-group early exit, and cheap.
    """
    n = x.shape[0]
    wx = w * x
    active = np.arange(x.shape[1])
    xa, wa, wxa, la, sx, s2 = x, w, wx, levels.copy(), sumlx.copy(), suml2.copy()
    with np.errstate(all="ignore"):
        for _ in range(5):
            lfa = la.astype(F32)
            changed = np.zeros(active.size, dtype=bool)
            for i in range(n):
                li = lfa[i]
                slx = sx - wxa[i] * li
                sl2 = s2 - (wa[i] * li) * li
                new = clamped_levels((xa[i] * sl2) / slx, lo, hi)
                newf = new.astype(F32)
                slx_new = slx + wxa[i] * newf
                sl2_new = sl2 + (wa[i] * newf) * newf
                accept = (slx > 0) & (new != la[i]) & ((slx_new * slx_new) * s2 > (sx * sx) * sl2_new)
                accept &= (sl2 > 0) if unsigned_store else (sl2_new > 0)
                if accept.any():
                    stored = (new & 0xFF) if unsigned_store else new
                    la[i] = np.where(accept, stored, la[i])
                    lfa[i] = la[i].astype(F32)
                    sx = np.where(accept, slx_new, sx)
                    s2 = np.where(accept, sl2_new, s2)
                    changed |= accept
            levels[:, active] = la
            sumlx[active] = sx
            suml2[active] = s2
            if not changed.any():
                break
            keep = np.flatnonzero(changed)
            active = active[keep]
            xa, wa, wxa, la, sx, s2 = xa[:, keep], wa[:, keep], wxa[:, keep], la[:, keep], sx[keep], s2[keep]
    return levels, sumlx, suml2


def make_q3_quants(x: np.ndarray, nmax: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) (Q3_K reference). Returns (scale (B,), L (n, B) codes)."""
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    with np.errstate(all="ignore"):
        iscale = F32(-nmax) / vmax
        lev = clamped_levels(iscale * x, -nmax, nmax - 1)
        lf = lev.astype(F32)
        sumlx = seq_sum((w * x) * lf)
        suml2 = seq_sum((w * lf) * lf)
        lev, sumlx, suml2 = refine_levels(x, w, lev, sumlx, suml2, -nmax, nmax - 1, unsigned_store=False)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    codes = np.where(zero, 0, lev + nmax)
    scale = np.where(zero, F32(0), scale).astype(F32)
    return scale, codes


def make_qkx_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants and make_qkx3_quants with explicit weights: asymmetric levels 0..nmax with a min.

    x, weights: (n, B). Returns (scale (B,), L (n, B) uint8 0..nmax, the_min (B,) = -min >= 0). The two C
    functions compute the same thing on these paths: their only difference, the degenerate test (qkx2
    `max == min`, qkx3 `max <= min`), agrees because min = MIN(0, smallest x) <= max always. A degenerate
    group returns early in C (L = 0, scale 0, the_min = -min), so no candidate is accepted for it here.
    The running `min` is replaced whenever a candidate wins and later candidates use it (in both x - min
    and max - min).
    """
    n, ngroups = x.shape
    xmin, mx = first_min_max(x)
    sum_w = seq_sum_from_first(weights)  # C starts these two from w[0], w[0]*x[0] (not from 0.0f)
    sum_x = seq_sum_from_first(weights * x)
    mn = np.where(xmin > 0, F32(0), xmin)
    degenerate = mx <= mn

    tmp = np.empty_like(x)
    auxf = np.empty_like(x)
    stacked = np.empty((n, 3, ngroups), dtype=F32)  # w*l, w*l*l, w*l*x summed in one sequential pass

    def error_of(scale: np.ndarray, minimum: np.ndarray, levels_f: np.ndarray) -> np.ndarray:
        # sum of w * f(((scale*L) + min) - x), f = |.| or square, in C's order
        np.multiply(levels_f, scale, out=tmp)
        np.add(tmp, minimum, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, weights, out=tmp)
        return seq_sum(tmp)

    def levels_for(iscale: np.ndarray, minimum: np.ndarray) -> np.ndarray:
        """clamp(nearest_int(iscale*(x - min)), 0, nmax) as float32, into auxf."""
        np.subtract(x, minimum, out=auxf)
        np.multiply(auxf, iscale, out=auxf)
        # rint equals ggml's nearest_int while |v| < 2^22. Bound |v| per group by |iscale| times the
        # largest |x - min| (x spans [xmin, mx]); degenerate groups are discarded anyway.
        reach = np.maximum(np.abs(mx - minimum), np.abs(xmin - minimum))
        bound = np.where(degenerate, F32(0), np.abs(iscale) * reach)
        unsafe = np.flatnonzero(~(bound < F32(1 << 21)))  # e.g. subnormal-only groups: iscale = inf
        literal = clamped_levels(auxf[:, unsafe], 0, nmax) if unsafe.size else None
        rint_levels(auxf, 0, nmax)
        if literal is not None:
            auxf[:, unsafe] = literal
        return auxf

    fnmax = F32(nmax)
    with np.errstate(all="ignore"):
        iscale = fnmax / (mx - mn)
        scale = F32(1) / iscale
        # The winning L is recomputed once at the end from the winning (iscale, min at that time).
        best_iscale, best_level_min = iscale, mn
        best = error_of(scale, mn, levels_for(iscale, mn))
        frmin, frdelta = F32(rmin), F32(rdelta)
        for step in range(nstep + 1):
            iscale = ((frmin + frdelta * F32(step)) + fnmax) / (mx - mn)
            levels_for(iscale, mn)
            np.multiply(weights, auxf, out=stacked[:, 0])
            np.multiply(stacked[:, 0], auxf, out=stacked[:, 1])
            np.multiply(stacked[:, 0], x, out=stacked[:, 2])
            sum_l, sum_l2, sum_xl = seq_sum(stacked)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive_min = this_min > 0
            this_min = np.where(positive_min, F32(0), this_min)
            this_scale = np.where(positive_min, sum_xl / sum_l2, this_scale)
            cur = error_of(this_scale, this_min, auxf)
            accept = (det > 0) & (cur < best) & ~degenerate
            if accept.any():
                best_iscale = np.where(accept, iscale, best_iscale)
                best_level_min = np.where(accept, mn, best_level_min)
                best = np.where(accept, cur, best)
                scale = np.where(accept, this_scale, scale)
                mn = np.where(accept, this_min, mn)
        levels = levels_for(best_iscale, best_level_min)
        np.copyto(levels, F32(0), where=degenerate)
        codes = levels.astype(np.uint8)
    scale = np.where(degenerate, F32(0), scale).astype(F32)
    return scale, codes, (-mn).astype(F32)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants(n, nmax, x, L, quant_weights): unsigned levels (quantizes sub-block scales/mins).

    Returns (scale (B,), L (n, B) int32 holding the uint8 values ggml stores, i.e. wrapped mod 256).
    """
    mx = np.zeros(x.shape[1:], dtype=F32)
    for xi in x:
        mx = np.where(mx > xi, mx, xi)  # MAX(max, x[i])
    zero = mx < GROUP_MAX_EPS
    fnmax = F32(nmax)
    wx = qw * x
    with np.errstate(all="ignore"):
        iscale = fnmax / mx
        first = (nearest_int(iscale * x) & 0xFF).astype(F32)  # stored into uint8 L[] before use
        scale = F32(1) / iscale
        diff = x - scale * first
        best = seq_sum((qw * diff) * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + fnmax) / mx
            scale_is = F32(1) / iscale_is
            lf = clamped_levels(iscale_is * x, None, nmax).astype(F32)
            diff = x - scale_is * lf
            mse = seq_sum((qw * diff) * diff)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, iscale_is, iscale)
        lev = clamped_levels(iscale * x, None, nmax)
        lf = lev.astype(F32)
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum((qw * lf) * lf)
        stored, sumlx, suml2 = refine_levels(x, qw, lev & 0xFF, sumlx, suml2, None, nmax, unsigned_store=True)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    stored = np.where(zero, 0, stored)
    scale = np.where(zero, F32(0), scale).astype(F32)
    return scale, stored


# ---------------------------------------------------------------- Q4_K / Q5_K scales and mins


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
    """Everything of quantize_row_q4_K/q5_K (_ref and _impl) except the bit packing of the levels."""
    blocks = as_blocks(rows, QK_K)
    nb = blocks.shape[0]
    xs = transposed_blocks(blocks, 32)  # (32, NB*8)
    if imatrix is None:
        # quantize_row_qX_K_ref: weights av_x + |x| with av_x = sqrt(mean of the sub-block's x^2)
        av_x = np.sqrt(seq_sum(xs * xs) / F32(32))
        weights = av_x + np.abs(xs)
        scale, levels, the_min = make_qkx_quants(xs, weights, p.nmax, p.ref_rmin, 0.1, p.ref_nstep, False)
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
        qw = transposed_imatrix(imatrix, rows.shape[0], 32)
        weights = kquant_impl_weights(blocks, xs, qw, sigma_factor=2)
        sw = seq_sum(weights)
        scale, levels, the_min = make_qkx_quants(xs, weights, p.nmax, -0.9, 0.05, 36, False)
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


def scale_min_grid(blocks: np.ndarray, level_max: int) -> LevelGrid:
    """Q4_K / Q5_K blocks (d:f16, dmin:f16, scales[12] first): y = (d*sc)*q - (dmin*m) per 32-element
    sub-block, as dequantize_row_q4_K / q5_K compute it (x - y is x + (-y) in IEEE arithmetic)."""
    sc, m = unpack_scale_min_k4(blocks[:, 4:16])
    step = read_half(blocks, 0) * sc.astype(F32)
    offset = -(read_half(blocks, 2) * m.astype(F32))
    return AffineGrid(step=step, offset=offset, sub_size=32, zero=0, level_min=0, level_max=level_max)


# ---------------------------------------------------------------- IQ4_NL / IQ4_XS

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
IQ4NL_VALUES = KVALUES_IQ4NL.astype(F32)
IQ4_NTRY = 7
# Midpoints between neighbouring table values (exact in float32: integers and halves).
IQ4NL_MIDPOINTS = ((IQ4NL_VALUES[:-1] + IQ4NL_VALUES[1:]) / F32(2)).astype(F32)


def best_index_iq4(x: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, x) elementwise -> uint8 index.

    The C clamps to 0 / 15 outside the table, binary-searches kv[mu-1] <= x < kv[mu], and returns mu-1
    iff `x - kv[mu-1] < kv[mu] - x` in float32. That is exactly "the number of midpoints <= x": near
    every midpoint both float32 differences are exact (they lie in a binade no finer than x's), and
    away from it rounding cannot reverse the comparison. Checked exhaustively for every float32 in
    [-127, 127] against a literal port of the C (formats/ggml-blocks.md); the tests re-check the
    neighbourhood of every midpoint.
    """
    idx = (x >= IQ4NL_MIDPOINTS[0]).view(np.uint8).copy()
    for mid in IQ4NL_MIDPOINTS[1:]:
        idx += (x >= mid).view(np.uint8)
    return idx


def best_index_iq4_literal(x: np.ndarray) -> np.ndarray:
    """A literal vectorised port of best_index_int8 (binary search + float32 comparison), for tests."""
    kv = IQ4NL_VALUES
    mu = np.clip(np.searchsorted(kv, x, side="right"), 1, 15)
    lower = (x - kv[mu - 1]) < (kv[mu] - x)
    idx = (mu - lower).astype(np.uint8)
    idx[x <= kv[0]] = 0
    idx[x >= kv[15]] = 15
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
        q = IQ4NL_VALUES.take(best_index_iq4(inv[None, :] * xt))
        np.multiply(wt, q, out=stacked[:, 1])  # C: w*q*xb[j] == (w*q)*x, w*q*q == (w*q)*q
        np.multiply(stacked[:, 1], xt, out=stacked[:, 0])
        stacked[:, 1] *= q
        sumqx, sumq2 = seq_sum(stacked)
        return sumqx, sumq2

    with np.errstate(all="ignore"):
        d = (-safe_max) / IQ4NL_VALUES[0]
        sumqx, sumq2 = sums(F32(1.0) / d)
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0.0)).astype(F32)
        best = d * sumqx
        for itry in range(-IQ4_NTRY, IQ4_NTRY + 1):
            inv = F32(itry + int(KVALUES_IQ4NL[0])) / safe_max
            sumqx, sumq2 = sums(inv)
            accept = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            if accept.any():
                new_d = sumqx / sumq2
                d = np.where(accept, new_d, d)
                best = np.where(accept, new_d * sumqx, best)
    return np.where(zero, F32(0.0), d).astype(F32)


def iq4_indices(xt: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Final indices (32, B): best_index(x * (scale ? 1/scale : 0)) with the unrounded float scale."""
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(scale != 0, F32(1.0) / scale, F32(0.0)).astype(F32)
    return best_index_iq4(xt * inv[None, :])


# ---------------------------------------------------------------- TQ1_0 / TQ2_0


def ternary_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0/TQ2_0: d = amax, trit = lroundf(x * (d ? 1/d : 0)) + 1 in {0, 1, 2} -> (d, uint8 codes)."""
    d = np.abs(blocks).max(axis=1)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    with np.errstate(invalid="ignore"):
        trits = (roundf_inplace(blocks * inv[:, None]) + F32(1.0)).astype(np.uint8)
    # amax below 2^-128: 1/d is inf and C's lroundf(±inf or NaN) + 1 is (LONG_MIN + 1) truncated = 1 on
    # x86-64 glibc, i.e. the zero trit for every element (NumPy's inf->int cast is undefined).
    return d.astype(F32), zero_codes_where_inverse_overflows(trits.T, inv, fill=1).T
