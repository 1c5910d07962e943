"""The scale searches behind the K-quants, ported from ggml-quants.c bit for bit.

Every helper works on a batch of independent groups laid out *element-major*: `x` has shape (n, B), row
`i` holding element i of all B groups (sub-blocks or super-blocks), so a column is one group. Element-wise
work runs on whole (n, B) arrays; anything ggml accumulates runs as a Python loop over the n rows adding
contiguous B-vectors in float32, which is exactly C's sequential left-to-right float sum (NumPy's own
np.sum is pairwise and differs). Per-group scalars are float32 B-vectors and every C branch is a mask.

Conventions that make the port exact (see /work/shared/specs/llamacpp-quants.md §1.5):
* all arithmetic in float32 with np.float32 constants, levels cast to float32 before multiplying;
* C's association order is kept: `w*x*l` is `(w*x)*l`, `scale*L + min - x` is `((scale*L)+min)-x`;
* strict comparisons and first-occurrence maxima, with the signed value kept;
* `nearest_int` is ggml's bit trick (it returns garbage rather than saturating for |v| >= 2^22 or NaN,
  and ggml's later clamps see that garbage, so we reproduce it). The hot candidate loops use the cheaper
  float `np.rint` + clamp instead, only for groups where |v| < 2^22 is proven or checked (`rint_levels`).
* the refinement passes of make_q3_quants / make_qp_quants carry on only the groups that changed
  (`refine_levels`); rows are processed in cache-sized pieces (`KQuantType`).
"""

from __future__ import annotations

import numpy as np

from quantcli.quants._common import nearest_int
from quantcli.quants.base import QuantType

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)

# Elements handed to one vectorised call. The searches make ~20 passes over (n, B) temporaries per
# candidate; pieces of 2^18 floats (1 MiB per temporary) keep them in cache: measured ~1.4x faster than
# the 2^20-element chunks base.quantize passes in, and smaller pieces lose to Python overhead.
PIECE_ELEMENTS = 1 << 18


class KQuantType(QuantType):
    """A K-quant: quantizes row pieces of about PIECE_ELEMENTS with `quantize_piece` (rows are independent)."""

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows, ncols = rows.shape
        step = max(1, PIECE_ELEMENTS // ncols)
        if nrows <= step:
            return cls.quantize_piece(rows, imatrix)
        out = np.empty((nrows, cls.row_bytes(ncols)), dtype=np.uint8)
        for r0 in range(0, nrows, step):
            out[r0 : r0 + step] = cls.quantize_piece(rows[r0 : r0 + step], imatrix)
        return out


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in index order, in float32, starting from 0.0f like ggml's `float s = 0; s += ...`."""
    acc = np.zeros(a.shape[1:], dtype=F32)
    for row in a:
        acc += row
    return acc


def clamped_levels(v: np.ndarray, lo: int | None, hi: int) -> np.ndarray:
    """`MAX(lo, MIN(hi, nearest_int(v)))` as int32 (lo=None: clamp from above only)."""
    q = nearest_int(v)
    np.minimum(q, hi, out=q)
    if lo is not None:
        np.maximum(q, lo, out=q)
    return q


def signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, vmax): the largest |x| of each group and the signed value of its first occurrence."""
    amax = np.zeros(x.shape[1:], dtype=F32)
    vmax = np.zeros(x.shape[1:], dtype=F32)
    for xi in x:
        ax = np.abs(xi)
        bigger = ax > amax
        amax = np.where(bigger, ax, amax)
        vmax = np.where(bigger, xi, vmax)
    return amax, vmax


def running_max_signed(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `if (fabsf(s) > amax) { amax = fabsf(s); max = s; }` over axis 0, both starting at 0."""
    return signed_absmax(values)


def running_max(values: np.ndarray) -> np.ndarray:
    """ggml's `if (s > m) m = s;` over axis 0 from m = 0 (keeps +0.0 unless a positive value beats it)."""
    m = np.zeros(values.shape[1:], dtype=F32)
    for v in values:
        m = np.where(v > m, v, m)
    return m


def rint_levels(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """In place: v <- clamp(rint(v), lo, hi) as float32 levels.

    Equal to `clamped_levels` wherever |v| < 2^22, where ggml's nearest_int is exactly round-half-even;
    callers use it only where that bound is proven (or checked), because it is half the work.
    """
    np.rint(v, out=v)
    np.maximum(v, F32(lo), out=v)
    np.minimum(v, F32(hi), out=v)
    return v


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw): symmetric levels -nmax..nmax-1.

    x: (n, B) float32; qw: (n, B) weights or None (then x*x). Returns (scale (B,), L (n, B) int32 codes
    0..2*nmax-1; all-zero groups get L = 0, not the zero level, and scale 0).
    """
    amax, vmax = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x if qw is None else qw
    wx = w * x
    fnmax = F32(nmax)
    lf = np.empty_like(x)
    tmp = np.empty_like(x)
    with np.errstate(all="ignore"):
        # |iscale*x| <= nmax + 0.9 in every group that is not all-zero (|x| <= |vmax|), so rint == nearest_int
        # there; the all-zero groups (inf/NaN here) are overwritten at the end.
        iscale = F32(-nmax) / vmax
        rint_levels(np.multiply(x, iscale, out=lf), -nmax, nmax - 1)
        sumlx = seq_sum(np.multiply(wx, lf, out=tmp))
        np.multiply(w, lf, out=tmp)
        suml2 = seq_sum(np.multiply(tmp, lf, out=tmp))
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        levels = lf.copy()
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(fnmax + F32(0.1) * F32(step)) / vmax
            rint_levels(np.multiply(x, iscale, out=lf), -nmax, nmax - 1)
            slx = seq_sum(np.multiply(wx, lf, out=tmp))
            np.multiply(w, lf, out=tmp)
            sl2 = seq_sum(np.multiply(tmp, lf, out=tmp))
            accept = (sl2 > 0) & (slx * slx > best * sl2)
            if accept.any():
                np.copyto(levels, lf, where=accept)
                scale = np.where(accept, slx / sl2, scale)
                best = np.where(accept, scale * slx, best)
        levels += fnmax
        np.copyto(levels, F32(0), where=zero)
        codes = levels.astype(np.int32)
    scale = np.where(zero, F32(0), scale).astype(F32)
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
    *,
    qkx3: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants (explicit weights): asymmetric levels 0..nmax with a min.

    Returns (scale (B,), L (n, B) int32 0..nmax, the_min (B,) = -min >= 0). The only difference between
    the two C functions on these paths is the degenerate test: qkx2 `max == min`, qkx3 `max <= min`.
    """
    n = x.shape[0]
    xmin = x[0].copy()
    mx = x[0].copy()
    sum_w = weights[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        xmin = np.where(xi < xmin, xi, xmin)
        mx = np.where(xi > mx, xi, mx)
        sum_w += weights[i]
        sum_x += weights[i] * xi
    mn = np.where(xmin > 0, F32(0), xmin)
    degenerate = (mx <= mn) if qkx3 else (mx == mn)

    tmp = np.empty_like(x)
    wl = np.empty_like(x)
    auxf = np.empty_like(x)

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
        levels = levels_for(iscale, mn).copy()
        best = error_of(scale, mn, levels)
        frmin, frdelta = F32(rmin), F32(rdelta)
        for step in range(nstep + 1):
            # `min` (mn) may have been replaced by an earlier winner: use the current one, as ggml does.
            iscale = ((frmin + frdelta * F32(step)) + fnmax) / (mx - mn)
            levels_for(iscale, mn)
            np.multiply(weights, auxf, out=wl)
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(np.multiply(wl, auxf, out=tmp))
            sum_xl = seq_sum(np.multiply(wl, x, out=tmp))
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive_min = this_min > 0
            this_min = np.where(positive_min, F32(0), this_min)
            this_scale = np.where(positive_min, sum_xl / sum_l2, this_scale)
            cur = error_of(this_scale, this_min, auxf)
            accept = (det > 0) & (cur < best)
            if accept.any():
                np.copyto(levels, auxf, where=accept)
                best = np.where(accept, cur, best)
                scale = np.where(accept, this_scale, scale)
                mn = np.where(accept, this_min, mn)
        np.copyto(levels, F32(0), where=degenerate)
        lev = levels.astype(np.int32)
    scale = np.where(degenerate, F32(0), scale).astype(F32)
    return scale, lev, (-mn).astype(F32)


def make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad, qkx3=False)


def make_qkx3_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad, qkx3=True)


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
