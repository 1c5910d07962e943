"""GPTQ (Frantar et al.) on one weight matrix and its Hessian: symmetric integer grid, group scales.

The algorithm is llm-compressor's `quantize_weight` (modifiers/gptq/gptq_quantize.py, 0.14): dead inputs,
damping as a fraction of mean diag(H), `Hinv = chol(H⁻¹)` upper, blocks of `block_size` columns with a
lazy update of the remaining columns once per block, error `(w - q) / Hinv[j, j]`, each column's error
pushed into the block's later columns as a rank-1 update. docs/calibration.md says where we differ and why.
The Hessian is accumulated in float64; the inverse factor is a float32 matrix (NumPy's LAPACK computes
in float64 inside) and the column loop runs in float32, as llm-compressor's does: half the memory traffic
of float64 and the reference's rounding steps. The loop's C twin (quantcli/native) gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantcli import native
from quantcli.quants.base import native_enabled
from quantcli.quants.packed.base import MODEL_DTYPES, round_to

ScalePolicy = Literal["static", "dynamic"]

# GPTQModel's retry step when the damped Hessian is not positive definite (its `damp_auto_increment`).
DAMP_STEP = 0.01


class Hessian:
    """Running mean of `2·xᵀx` over calibration rows (tokens): `H ← H·n/(n+m) + (2/(n+m))·XᵀX`.

    A mean, not a sum, so that its magnitude does not grow with the sample count (float64 throughout). GPTQ
    itself is invariant to the Hessian's scale: damping is relative and the error update cancels it.
    """

    def __init__(self, columns: int) -> None:
        self.matrix = np.zeros((columns, columns), dtype=np.float64)
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        """Accumulate activations of shape (..., columns): every leading index is one observation."""
        columns = self.matrix.shape[0]
        rows = np.asarray(x, dtype=np.float64).reshape(-1, columns)
        self.add_gram(rows.T @ rows, rows.shape[0])

    def add_gram(self, gram: np.ndarray, m: int) -> None:
        """Accumulate `m` observations given by their Gram matrix XᵀX (computed by the caller, e.g. in float32)."""
        if m == 0:
            return
        total = self.count + m
        self.matrix *= self.count / total
        self.matrix += (2.0 / total) * np.asarray(gram, dtype=np.float64)
        self.count = total


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int = 128
    damp: float = 0.01  # fraction of mean diag(H) added to the diagonal; raised by DAMP_STEP if needed
    block_size: int = 128
    act_order: bool = False  # columns by decreasing diag(H)
    # static: group scales from the whole weight before the loop (llm-compressor's min/max observer);
    # dynamic: a group's scale from its error-updated columns when its first column is reached (GPTQModel,
    # mlx-lm), so the scale sees the compensation so far.
    scales: ScalePolicy = "static"
    scale_dtype: str = "float32"  # the model dtype the scales are stored in (and rounded to)

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"GPTQ bits must be 2..8, not {self.bits}")
        if self.group_size <= 0 or self.block_size <= 0:
            raise ValueError("GPTQ group_size and block_size must be positive")
        if self.scales == "dynamic" and self.block_size % self.group_size:
            # A group's scale is taken from the working block: the whole group must be inside it.
            raise ValueError(
                f"dynamic GPTQ scales need block_size ({self.block_size}) to be a multiple of group_size "
                f"({self.group_size})"
            )
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"GPTQ damp must be in (0, 1), not {self.damp}")


@dataclass(frozen=True)
class GPTQResult:
    codes: np.ndarray  # int8 (out, in), signed in [-2^(bits-1), 2^(bits-1) - 1], original column order
    scales: np.ndarray  # float32 (out, in / group_size), values of the scale dtype
    g_idx: np.ndarray  # int32 (in,): the scale group of each input column
    damp: float  # the damping fraction actually used

    def dequantize(self) -> np.ndarray:
        """codes · scale of each column's group, float32 (out, in)."""
        return (self.codes.astype(np.float32) * self.scales[:, self.g_idx]).astype(np.float32)


def symmetric_scales(groups: np.ndarray, bits: int, scale_dtype: str) -> np.ndarray:
    """compressed-tensors' symmetric rule on (..., group) values: max|w| / ((qmax - qmin) / 2) in float32,
    rounded to the scale dtype; a zero scale becomes that dtype's epsilon (calculate_qparams)."""
    absmax = np.abs(np.asarray(groups, dtype=np.float32)).max(axis=-1)
    scale = round_to(absmax / np.float32((2**bits - 1) / 2), scale_dtype)
    eps = np.float32(np.finfo(MODEL_DTYPES[scale_dtype]).eps)
    return np.where(scale == 0, eps, scale).astype(np.float32)


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves, [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [-D⁻¹CA⁻¹, D⁻¹]]:
    n³/3 flops in matrix products instead of a general inverse's 2n³ (NumPy has no trtri)."""
    n = lower.shape[0]
    if n <= 128:
        return np.linalg.inv(lower)
    h = n // 2
    a_inv = _lower_inverse(lower[:h, :h])
    d_inv = _lower_inverse(lower[h:, h:])
    out = np.zeros_like(lower)
    out[:h, :h] = a_inv
    out[h:, h:] = d_inv
    out[h:, :h] = -(d_inv @ (lower[h:, :h] @ a_inv))
    return out


def without_dead_columns(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 copy of H in which every dead input (H_ii = 0: a column no calibration token ever
    activates) has H_ii = 1, and the mask of those columns. Their weights cannot matter, so callers zero
    them; H_ii = 1 makes H invertible there and keeps them out of every other column's update."""
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    return h, dead


def inverse_hessian_factor(
    hessian: np.ndarray, damp: float, dtype: type[np.floating] = np.float64
) -> tuple[np.ndarray, float]:
    """Upper U with UᵀU = (H + λI)⁻¹, λ = damp · mean diag(H). When the Cholesky fails the fraction is
    raised by DAMP_STEP (GPTQModel) instead of falling back to round-to-nearest (llm-compressor).

    U is what torch's cholesky(cholesky_inverse(cholesky(H)), upper=True) gives, from one factorization:
    H = U⁻¹U⁻ᵀ with U⁻¹ upper, so with J the reversal, JHJ = (JU⁻¹J)(JU⁻¹J)ᵀ is an ordinary Cholesky
    and U = J·inv(chol(JHJ))·J. `dtype`: the precision of the factorization (λ is computed in float64)."""
    n = hessian.shape[0]
    mean_diag = float(np.mean(np.diag(hessian)))
    if not np.isfinite(mean_diag):
        raise ValueError("GPTQ Hessian has non-finite entries")
    reversed_h = np.ascontiguousarray(hessian[::-1, ::-1], dtype=dtype)
    diagonal = np.arange(n)
    fraction = damp
    while fraction < 1.0:
        damped = reversed_h.copy()
        damped[diagonal, diagonal] += dtype(fraction * mean_diag)
        try:
            lower = np.linalg.cholesky(damped)
        except np.linalg.LinAlgError:
            fraction += DAMP_STEP
            continue
        return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1]), fraction
    raise ValueError(f"GPTQ Hessian is not positive definite even with damping {fraction:.2f}")


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, config: GPTQConfig) -> GPTQResult:
    """Quantize weight (out, in) against the input Hessian (in, in) of its layer."""
    out, n = weight.shape
    if hessian.shape != (n, n):
        raise ValueError(f"Hessian shape {hessian.shape} does not fit a weight of {n} input columns")
    gs = config.group_size
    if n % gs:
        raise ValueError(f"group_size {gs} does not divide {n} input columns")
    qmax = (1 << (config.bits - 1)) - 1
    qmin = -qmax - 1
    n_groups = n // gs

    weight32 = np.asarray(weight, dtype=np.float32)
    H, dead = without_dead_columns(hessian)
    diag = np.diag(H).copy()

    if config.scales == "static":
        # Observed on the weight as loaded, before dead columns are zeroed (the observer runs first).
        static = symmetric_scales(weight32.reshape(out, n_groups, gs), config.bits, config.scale_dtype)

    if config.act_order:
        perm = np.argsort(-diag, kind="stable")
        H = H[np.ix_(perm, perm)]  # one gather, not two
    else:
        perm = np.arange(n)
    # Columns as contiguous rows: column j of the weight is work[j].
    work = np.ascontiguousarray(weight32.T[perm])
    work[dead[perm]] = 0.0

    if config.scales == "static":
        # Groups stay those of the original column positions; the processing order only visits them.
        g_of_step = perm // gs
        scales_t = np.ascontiguousarray(static.T)  # (n_groups, out)
    else:
        # Groups are consecutive in processing order; with act-order g_idx maps them back.
        g_of_step = np.arange(n) // gs
        scales_t = np.empty((n_groups, out), dtype=np.float32)

    upper, damp = inverse_hessian_factor(H, config.damp, np.float32)
    codes_t = np.empty((n, out), dtype=np.int8)
    block = config.block_size
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = work[i1:i2]
        hinv1 = np.ascontiguousarray(upper[i1:i2, i1:i2])
        err1 = np.empty((i2 - i1, out), dtype=np.float32)
        scale_rows = g_of_step[i1:i2]
        if config.scales == "static":
            _quantize_columns(w1, hinv1, err1, 0, i2 - i1, scales_t, scale_rows, codes_t[i1:i2], qmin, qmax)
        else:
            for g0 in range(i1, i2, gs):  # block_size is a multiple of group_size
                # The group's scale from its columns with every earlier column's error applied.
                group = w1[g0 - i1 : g0 - i1 + gs]
                scales_t[g0 // gs] = symmetric_scales(group.T, config.bits, config.scale_dtype)
                _quantize_columns(w1, hinv1, err1, g0 - i1, min(i2, g0 + gs) - i1, scales_t, scale_rows,
                                  codes_t[i1:i2], qmin, qmax)  # fmt: skip
        if i2 < n:
            work[i2:] -= upper[i1:i2, i2:].T @ err1

    inverse = np.argsort(perm)
    codes = np.ascontiguousarray(codes_t[inverse].T)
    g_idx = g_of_step[inverse].astype(np.int32)
    scales = np.ascontiguousarray(scales_t.T)
    return GPTQResult(codes=codes, scales=scales, g_idx=g_idx, damp=damp)


def _quantize_columns(
    w1: np.ndarray, hinv1: np.ndarray, err1: np.ndarray, start: int, stop: int, scales_t: np.ndarray,
    scale_rows: np.ndarray, codes: np.ndarray, qmin: int, qmax: int,
) -> None:
    """Columns start..stop-1 of a block (rows of `w1`, float32, updated in place), column i on the grid
    `scales_t[scale_rows[i]]`: its codes into `codes[i]`, its error `(w - q·scale) / Hinv[i, i]` into
    `err1[i]` and, as a rank-1 update (each product rounded, then subtracted: llm-compressor's order), into
    the block's later columns. The C library's twin does the same operations in the same order."""
    if native_enabled() and native.gptq_columns(w1, hinv1, err1, start, stop, scales_t, scale_rows, codes, qmin, qmax):
        return
    for i in range(start, stop):
        w = w1[i]
        scale = scales_t[scale_rows[i]]
        # The division in float32, as compressed-tensors does it: a group's largest |w| sits at exactly
        # (2^bits - 1)/2 steps when first reached, a tie float32 and float64 would break differently.
        q = np.clip(np.rint(w / scale), qmin, qmax)
        codes[i] = q
        e = err1[i]
        np.multiply(q, scale, out=e)
        np.subtract(w, e, out=e)
        e /= hinv1[i, i]
        w1[i + 1 :] -= hinv1[i, i + 1 :, None] * e
