"""Q5_0 (32-blocks, fp16 scale, 5-bit signed quants: low nibbles + a 32-bit high-bit mask).

Reference path = quantize_row_q5_0_ref; imatrix path = quantize_row_q5_0_impl (make_qx_quants, nmax 16).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    SEARCH_SLICE_ELEMENTS,
    absmax_ref_codes,
    half_bytes,
    impl_weights,
    in_row_slices,
    make_qx_quants,
    pack_bit4,
    pack_nibbles,
    read_half,
    transposed_blocks,
    unpack_bit4,
    unpack_nibbles,
)


class Q5_0(QuantType, qtype=GGMLQuantizationType.Q5_0):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            xt = transposed_blocks(part, 32)
            if imatrix is None:
                d, qt = absmax_ref_codes(xt, -16.0, 16.5, 31)
            else:
                d, qt = make_qx_quants(xt, 16, impl_weights(part, imatrix))
            out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(d)
            out[:, 2:6] = pack_bit4(qt)
            out[:, 6:] = pack_nibbles(qt)
            return out.reshape(part.shape[0], -1)

        search = None if imatrix is None else SEARCH_SLICE_ELEMENTS
        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel, search)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        q = (unpack_nibbles(blocks[:, 6:]) | unpack_bit4(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
        return (q.astype(F32) * d).reshape(data.shape[0], ncols)
