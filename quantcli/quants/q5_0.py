"""Q5_0 (32-blocks, fp16 scale, 5-bit signed quants: low nibbles + a 32-bit high-bit mask).

Reference path = quantize_row_q5_0_ref; imatrix path = quantize_row_q5_0_impl (make_qx_quants, nmax 16).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    as_blocks,
    half_bytes,
    impl_weights,
    make_qx_quants,
    pack_bit4,
    pack_nibbles,
    q4_0_ref_codes,
    read_half,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_0(QuantType, qtype=GGMLQuantizationType.Q5_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        nrows = rows.shape[0]
        blocks = as_blocks(rows, 32)
        if imatrix is None:
            d, q = q4_0_ref_codes(blocks, -16.0, 16.5, 31)
        else:
            d, q = make_qx_quants(blocks, 16, impl_weights(rows, imatrix))
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        out[:, 2:6] = pack_bit4(q)
        out[:, 6:] = pack_nibbles(q)
        return out.reshape(nrows, -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = (unpack_nibbles(blocks[:, 6:]) | unpack_bit4(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
