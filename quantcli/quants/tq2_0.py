"""TQ2_0 (256-blocks, 2-bit ternary codes, fp16 scale) = quantize_row_tq2_0_ref; imatrix ignored."""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.base import QuantType
from quantcli.quants.ggml import F32, QK_K, as_blocks, half_bytes, read_half, ternary_codes


class TQ2_0(QuantType, qtype=GGMLQuantizationType.TQ2_0):
    uses_imatrix = False

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, QK_K)
        d, trits = ternary_codes(blocks)
        # element 128c + 32n + m -> bits 2n of byte 32c + m
        t = trits.reshape(-1, 2, 4, 32)
        qs = t[:, :, 0] | (t[:, :, 1] << 2) | (t[:, :, 2] << 4) | (t[:, :, 3] << 6)
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, :64] = qs.reshape(-1, 64)
        out[:, 64:66] = half_bytes(d)
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 64)
        qs = blocks[:, :64].reshape(-1, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        q = ((qs >> shifts) & np.uint8(3)).astype(np.int8) - np.int8(1)
        return (q.astype(F32).reshape(-1, QK_K) * d).reshape(data.shape[0], ncols)
