"""Q4_0 (32-blocks, fp16 scale, 4-bit signed quants) and the block helpers shared by the 32-block types.

Reference path (no imatrix) = quantize_row_q4_0_ref; with an imatrix = quantize_row_q4_0_impl, whose
make_qx_quants search is implemented here (Q5_0 reuses it). Byte layout: formats/ggml-blocks.md.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


# ---------------------------------------------------------------- block helpers (shared by the 32-block types)


def as_blocks(rows: np.ndarray, block: int) -> np.ndarray:
    """(nrows, ncols) float32 -> (nblocks, block) view, blocks in memory order."""
    return np.ascontiguousarray(rows, dtype=F32).reshape(-1, block)


def seq_sum(terms: np.ndarray, axis: int = 0) -> np.ndarray:
    """C's `float s = 0; for (i...) s += t[i];` along `axis`: strictly sequential float32.

    ufunc.accumulate is a left-to-right recurrence (never pairwise), so it rounds exactly like the C loop.
    It starts from t[0] instead of 0.0f, which only differs when every term is -0.0 (C gives +0.0): adding
    +0.0 at the end maps -0.0 to +0.0 and leaves every other value unchanged.
    """
    acc = np.add.accumulate(terms, axis=axis, dtype=F32)
    last = acc[-1] if axis == 0 else np.take(acc, -1, axis=axis)
    return last + F32(0.0)


def signed_absmax(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, vmax) per row of `blocks`: C's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from 0.

    vmax is the signed value of the FIRST element of largest magnitude; +0.0 for an all-zero block.
    """
    mx = blocks.max(axis=1)
    mn = blocks.min(axis=1)
    neg_mn = -mn
    amax = np.maximum(mx, neg_mn)
    vmax = np.where(mx > neg_mn, mx, mn)
    # +a and -a both present: whichever comes first wins (frequent with bf16-rounded weights).
    tie = (mx == neg_mn) & (amax > 0)
    if tie.any():
        sub = blocks[tie]
        first = np.argmax(np.abs(sub) == amax[tie, None], axis=1)
        vmax[tie] = sub[np.arange(sub.shape[0]), first]
    vmax[amax == 0] = F32(0.0)
    return amax.astype(F32), vmax.astype(F32)


def fix_zero_sign(values: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """A C min/max scan with strict comparisons keeps the FIRST zero it meets when the extreme is 0, so
    its sign is that element's sign; NumPy's min/max leave the sign of such a zero unspecified."""
    zero = values == 0
    if zero.any():
        sub = blocks[zero]
        first = np.argmax(sub == 0, axis=1)
        values[zero] = sub[np.arange(sub.shape[0]), first]
    return values


def half_bytes(values: np.ndarray) -> np.ndarray:
    """float32 (n,) -> (n, 2) uint8: the little-endian fp16 (RNE, == GGML_FP32_TO_FP16 for non-NaN)."""
    return np.ascontiguousarray(values, dtype=F32).astype("<f2").view(np.uint8).reshape(-1, 2)


def read_half(data: np.ndarray, offset: int) -> np.ndarray:
    """(nblocks, type_size) uint8 -> float32 (nblocks, 1) of the fp16 at byte `offset`."""
    return np.ascontiguousarray(data[:, offset : offset + 2]).view("<f2").astype(F32)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(nblocks, 32) codes 0..15 -> (nblocks, 16): element j low nibble, element j+16 high nibble."""
    q = q.astype(np.uint8, copy=False)
    return (q[:, :16] & np.uint8(0x0F)) | (q[:, 16:] << np.uint8(4))


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """Inverse of pack_nibbles: (nblocks, 16) -> (nblocks, 32) uint8."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def pack_bit4(q: np.ndarray) -> np.ndarray:
    """(nblocks, 32) 5-bit codes -> (nblocks, 4) bytes of the LE uint32 whose bit j is bit 4 of element j."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def unpack_bit4(qh: np.ndarray) -> np.ndarray:
    """Inverse of pack_bit4: (nblocks, 4) -> (nblocks, 32) uint8 holding 0x10 or 0."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def row_sigma2(rows: np.ndarray) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1 imatrix paths: sequential Σx² over the whole row / n_per_row -> (nrows,)."""
    return seq_sum(rows * rows, axis=1) / F32(rows.shape[1])


def impl_weights(rows: np.ndarray, imatrix: np.ndarray, block: int = 32) -> np.ndarray:
    """weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j]) per row, returned as (nblocks, block)."""
    sigma2 = row_sigma2(rows)[:, None]
    w = imatrix[None, :].astype(F32) * np.sqrt(sigma2 + rows * rows)
    return w.reshape(-1, block)


# ---------------------------------------------------------------- make_qx_quants (rmse_type 1, weights given)


def make_qx_quants(blocks: np.ndarray, nmax: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised make_qx_quants(n, nmax, x, L, rmse_type=1, qw): returns (scale (B,), L (B, n) uint8).

    Candidate iscales are evaluated for all blocks at once; sums run sequentially over the element axis.
    """
    xt = np.ascontiguousarray(blocks.T)  # (n, B): element-major so each accumulation step is contiguous
    wt = np.ascontiguousarray(weights.T)
    amax, vmax = signed_absmax(blocks)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1.0), vmax)
    wx = wt * xt  # C: w*x[i]*l == (w*x[i])*l
    lo, hi = F32(-nmax), F32(nmax - 1)

    def levels(iscale: np.ndarray) -> np.ndarray:
        # nearest_int == rint for |v| < 2^22 (here |v| <= nmax + 1); clamp as MAX(-nmax, MIN(nmax-1, l)).
        return np.clip(np.rint(iscale[None, :] * xt), lo, hi)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv = levels(iscale)
        return seq_sum(wx * lv), seq_sum((wt * lv) * lv)

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
        codes = (levels(best_iscale) + F32(nmax)).astype(np.uint8).T
    scale = np.where(zero, F32(0.0), scale).astype(F32)
    codes[zero] = 0
    return scale, np.ascontiguousarray(codes)


# ---------------------------------------------------------------- Q4_0


def q4_0_ref_codes(blocks: np.ndarray, divisor: float, offset: float, top: int) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q4_0_ref / q5_0_ref: d = vmax/divisor, q = MIN(top, (int8)(x*id + offset))."""
    _, vmax = signed_absmax(blocks)
    d = vmax / F32(divisor)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
    # x*id + offset is >= 0 here, so the float->int8 truncation is a truncation toward zero.
    q = (blocks * inv[:, None] + F32(offset)).astype(np.uint8)
    np.minimum(q, np.uint8(top), out=q)
    return d.astype(F32), q


class Q4_0(QuantType, qtype=GGMLQuantizationType.Q4_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, 32)
        if imatrix is None:
            d, q = q4_0_ref_codes(blocks, -8.0, 8.5, 15)
        else:
            d, q = make_qx_quants(blocks, 8, impl_weights(rows, imatrix))
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:] = pack_nibbles(q)
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
