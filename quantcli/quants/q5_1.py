"""Q5_1 (32-blocks, fp16 scale + fp16 min, 5-bit unsigned quants).

Reference path = quantize_row_q5_1_ref (note: no clamp to 31, the C stores the truncated value as is);
imatrix path = quantize_row_q5_1_impl (make_qkx3_quants, nmax 31).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from quantcli.quants.base import QuantType
from quantcli.quants.q4_0 import (
    F32,
    SEARCH_SLICE_ELEMENTS,
    half_bytes,
    impl_weights,
    in_row_slices,
    pack_bit4,
    pack_nibbles,
    read_half,
    transposed_blocks,
    unpack_bit4,
    unpack_nibbles,
)
from quantcli.quants.q4_1 import make_qkx3_quants, minmax_ref_codes


class Q5_1(QuantType, qtype=GGMLQuantizationType.Q5_1):
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        def kernel(part: np.ndarray) -> np.ndarray:
            xt = transposed_blocks(part, 32)
            if imatrix is None:
                d, m, qt = minmax_ref_codes(xt, 31, clamp=False)
            else:
                d, m, qt = make_qkx3_quants(xt, impl_weights(part, imatrix), 31)
            out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
            out[:, 0:2] = half_bytes(d)
            out[:, 2:4] = half_bytes(m)
            out[:, 4:8] = pack_bit4(qt)
            out[:, 8:] = pack_nibbles(qt)
            return out.reshape(part.shape[0], -1)

        search = None if imatrix is None else SEARCH_SLICE_ELEMENTS
        return in_row_slices(rows, cls.row_bytes(rows.shape[1]), kernel, search)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        m = read_half(blocks, 2)
        q = (unpack_nibbles(blocks[:, 8:]) | unpack_bit4(blocks[:, 4:8])).astype(F32)
        return (q * d + m).reshape(data.shape[0], ncols)
