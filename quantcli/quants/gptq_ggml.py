"""GPTQ whose grid is a stock GGML type: ordinary tensor bytes of that type, chosen with error compensation.

The column loop is gptq.py's (dead columns, damping, the inverse Cholesky factor and the lazy block update
come from there). What changes is the grid: when the loop reaches the first column of a ggml block (32
columns, 256 for the K-quants and IQ4_XS), that block's parameters for every row (d, dmin, sub-block scales
and mins) are chosen by our byte-exact ggml quantizer, run on the block's columns as compensated so far with
the layer's importance as its imatrix; each column of the block then takes, row by row, the nearest value
those fixed parameters can represent (LevelGrid.nearest: on an affine grid the rounded step, on IQ4's lookup
table the nearest of its scaled values), and its error moves to the later columns. The bytes are the
quantizer's parameter bytes with the chosen levels written over its own (GridQuantType.write_levels), so
stock llama.cpp decodes them. docs/calibration.md, "GPTQ on GGML block grids", gives the choices and the
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.base import get, quantize, refuse_non_finite
from quantcli.quants.ggml import GridQuantType
from quantcli.quants.gptq import inverse_hessian_factor, without_dead_columns


@dataclass(frozen=True)
class GgmlGPTQResult:
    data: np.ndarray  # uint8 (out, row_bytes): the tensor's bytes in the type's layout
    values: np.ndarray  # float32 (out, in): what `data` decodes to, the values whose error was propagated


def gptq_ggml(
    weight: np.ndarray,
    hessian: np.ndarray,
    qtype: GGMLQuantizationType,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    importance: np.ndarray | None = None,
    name: str = "tensor",
    threads: int | None = None,
) -> GgmlGPTQResult:
    """Quantize weight (out, in) against its layer's input Hessian (in, in) to the grid of `qtype`.

    `importance` (in,) is the per-column imatrix the ggml quantizer weighs its parameter search with;
    by default diag(H)/2, the mean of x² llama-imatrix would collect (H is a mean of 2·xᵀx). The lazy
    update runs every `block_size` columns, rounded up to a multiple of the type's block so that no ggml
    block straddles two updates. `threads` goes to the C quantizer (None: every CPU), as in `quantize`.
    """
    cls = get(qtype)
    if not issubclass(cls, GridQuantType):
        raise Unsupported(f"{name}: GPTQ has no grid for tensor type {cls.qtype.name}")
    weight32 = np.asarray(weight, dtype=np.float32)
    out, n = weight32.shape
    qk = cls.block_size
    if n % qk:
        raise InputInvalid(f"{name}: row length {n} is not a multiple of {cls.qtype.name}'s block size {qk}")
    if hessian.shape != (n, n):
        raise ValueError(f"Hessian shape {hessian.shape} does not fit a weight of {n} input columns")
    refuse_non_finite(weight32, name, 0)
    if importance is None:
        importance = np.diag(hessian) / 2
    elif importance.shape != (n,):
        raise ValueError(f"importance has shape {importance.shape}, expected ({n},)")
    imatrix = np.asarray(importance, dtype=np.float32)
    span = -(-max(block_size, qk) // qk) * qk

    H, dead = without_dead_columns(hessian)
    upper, _ = inverse_hessian_factor(H, damp)
    # Columns as contiguous rows: column j of the weight is work[j].
    work = np.ascontiguousarray(weight32.astype(np.float64).T)
    work[dead] = 0.0
    result = np.empty((out, n // qk, cls.type_size), dtype=np.uint8)
    values_t = np.empty((n, out), dtype=np.float32)
    for i1 in range(0, n, span):
        i2 = min(i1 + span, n)
        w1 = work[i1:i2]
        hinv1 = upper[i1:i2, i1:i2]
        err1 = np.empty((i2 - i1, out), dtype=np.float64)
        for i in range(i2 - i1):
            j = i1 + i
            col = j % qk
            if col == 0:
                # The block's columns with the errors of this update block's earlier columns applied.
                slab = w1[i : i + qk] - hinv1[:i, i : i + qk].T @ err1[:i]
                blocks = quantize(
                    slab.T.astype(np.float32), cls.qtype, imatrix[j : j + qk], name=name, threads=threads
                )
                grid = cls.grid(blocks)
                # The quantizer's own levels stay wherever a sub-block's scale is 0 (every level decodes
                # the same there).
                levels = cls.levels(blocks).astype(np.int32)
            w = w1[i] - hinv1[:i, i] @ err1[:i]
            levels[:, col] = grid.nearest(w, col, levels[:, col])
            # The value exactly as the type's to_float decodes it: that is the error GPTQ propagates.
            values_t[j] = grid.values(levels[:, col : col + 1], first=col)[:, 0]
            err1[i] = (w - values_t[j]) / hinv1[i, i]
            if col == qk - 1:
                cls.write_levels(blocks, levels)
                result[:, j // qk] = blocks
        if i2 < n:
            work[i2:] -= upper[i1:i2, i2:].T @ err1
    return GgmlGPTQResult(data=result.reshape(out, -1), values=np.ascontiguousarray(values_t.T))
