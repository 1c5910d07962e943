"""TQ1_0 (256-blocks, base-3 packed ternary codes, fp16 scale) = quantize_row_tq1_0_ref; imatrix ignored."""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.base import QuantType
from quantcli.quants.ggml import F32, QK_K, as_blocks, half_bytes, read_half, ternary_codes

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _pack_trits(groups: np.ndarray, extra_shift: bool = False) -> np.ndarray:
    """groups (..., n, m): trits along n, most significant first -> ceil(q * 256 / 243) as uint8."""
    q = np.zeros(groups.shape[:-2] + groups.shape[-1:], dtype=np.uint16)
    for n in range(groups.shape[-2]):
        q = q * np.uint16(3) + groups[..., n, :]
    if extra_shift:  # the 4-trit qh bytes shift their first trit into the top position
        q = q * np.uint16(3)
    return ((q * np.uint16(256) + np.uint16(242)) // np.uint16(243)).astype(np.uint8)


def _unpack_trits(packed: np.ndarray, count: int) -> np.ndarray:
    """packed (..., m) -> (..., count, m) trits: ((uint8)(q * 3^n) * 3) >> 8."""
    q = (packed[..., None, :] * _POW3[:count, None]).astype(np.uint8)  # uint8 product wraps like C
    return ((q.astype(np.uint16) * np.uint16(3)) >> np.uint16(8)).astype(np.int8)


class TQ1_0(QuantType, qtype=GGMLQuantizationType.TQ1_0):
    uses_imatrix = False

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, QK_K)
        d, trits = ternary_codes(blocks)
        trits = trits.astype(np.uint16)
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, :32] = _pack_trits(trits[:, :160].reshape(-1, 5, 32))  # byte m <- elements m + 32n
        out[:, 32:48] = _pack_trits(trits[:, 160:240].reshape(-1, 5, 16))  # byte m <- 160 + m + 16n
        out[:, 48:52] = _pack_trits(trits[:, 240:].reshape(-1, 4, 4), extra_shift=True)  # 240 + j + 4m
        out[:, 52:54] = half_bytes(d)
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 52)
        nb = blocks.shape[0]
        trits = np.concatenate(
            [
                _unpack_trits(blocks[:, :32], 5).reshape(nb, 160),
                _unpack_trits(blocks[:, 32:48], 5).reshape(nb, 80),
                _unpack_trits(blocks[:, 48:52], 4).reshape(nb, 16),
            ],
            axis=1,
        )
        return ((trits - np.int8(1)).astype(F32) * d).reshape(data.shape[0], ncols)
