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
    as_blocks,
    half_bytes,
    pack_nibbles,
    read_half,
    seq_sum,
    signed_absmax,
    unpack_nibbles,
)

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_KV = KVALUES_IQ4NL.astype(F32)
NTRY = 7


def best_index_iq4(x: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, x) elementwise -> uint8 index.

    The C binary search ends with kv[mu-1] <= x < kv[mu], i.e. mu = searchsorted(kv, x, 'right'); it then
    returns mu-1 iff x - kv[mu-1] < kv[mu] - x (float32), and clamps to 0 / 15 outside the table.
    """
    mu = np.clip(np.searchsorted(_KV, x, side="right"), 1, 15)
    lower = (x - _KV[mu - 1]) < (_KV[mu] - x)
    idx = (mu - lower).astype(np.uint8)
    idx[x <= _KV[0]] = 0
    idx[x >= _KV[15]] = 15
    return idx


def iq4_weights(blocks: np.ndarray, super_block: int, imatrix_blocks: np.ndarray | None) -> np.ndarray:
    """Per-element weights of quantize_row_iq4_nl_impl; `blocks` (B, 32), B a multiple of super_block/32."""
    x2 = blocks * blocks
    if imatrix_blocks is None:
        return x2
    per_super = blocks.reshape(-1, super_block)
    sigma2 = seq_sum(per_super * per_super, axis=1) * (F32(2.0) / F32(super_block))
    sigma2 = np.repeat(sigma2, super_block // 32)[:, None]
    return imatrix_blocks * np.sqrt(sigma2 + x2)


def iq4_block_scales(blocks: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The per-32-block scale search of quantize_row_iq4_nl_impl (ntry = 7) -> float32 (B,), 0 if |x| < eps."""
    amax, vmax = signed_absmax(blocks)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1.0), vmax)
    xt = np.ascontiguousarray(blocks.T)
    wt = np.ascontiguousarray(weights.T)

    def sums(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _KV[best_index_iq4(inv[None, :] * xt)]
        wq = wt * q  # C: w*q*xb[j] == (w*q)*x, w*q*q == (w*q)*q
        return seq_sum(wq * xt), seq_sum(wq * q)

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


def requantize(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Final indices: best_index(x * (scale ? 1/scale : 0)) with the unrounded float scale."""
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, F32(1.0) / scale, F32(0.0)).astype(F32)
    return best_index_iq4(blocks * inv[:, None])


class IQ4_NL(QuantType, qtype=GGMLQuantizationType.IQ4_NL):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, 32)
        im = None if imatrix is None else np.broadcast_to(imatrix.astype(F32), rows.shape).reshape(-1, 32)
        scale = iq4_block_scales(blocks, iq4_weights(blocks, 32, im))
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(scale)
        out[:, 2:] = pack_nibbles(requantize(blocks, scale))
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        return (d * _KV[unpack_nibbles(blocks[:, 2:])]).reshape(data.shape[0], ncols)
