"""IQ4_NL (32-blocks, fp16 scale, 4-bit indices into a non-linear table).

llama-quantize calls quantize_iq4_nl -> quantize_row_iq4_nl_impl(32, 32, ..., ntry=7) for every block,
with weights x² without an imatrix and qw*sqrtf(sigma2 + x²) with one (sigma2 = 2*Σx²/32 per block).
The search (ggml.iq4_block_scales) is shared with IQ4_XS. (quantize_row_iq4_nl_ref uses ntry=-1 and is
NOT what llama-quantize writes.)
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    IQ4NL_VALUES,
    SlicedQuantType,
    half_bytes,
    iq4_block_scales,
    iq4_indices,
    iq4_weights,
    pack_nibbles,
    read_half,
    transposed_blocks,
    transposed_imatrix,
    unpack_nibbles,
)


class IQ4_NL(SlicedQuantType, qtype=GGMLQuantizationType.IQ4_NL):
    uses_imatrix = True

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = transposed_blocks(rows, 32)
        im = None if imatrix is None else transposed_imatrix(imatrix, rows.shape[0], 32)
        scale = iq4_block_scales(xt, iq4_weights(xt, 32, im))
        out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(scale)
        out[:, 2:] = pack_nibbles(iq4_indices(xt, scale))
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = read_half(blocks, 0)
        return (d * IQ4NL_VALUES[unpack_nibbles(blocks[:, 2:])]).reshape(data.shape[0], ncols)
