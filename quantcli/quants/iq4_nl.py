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
    GridQuantType,
    LevelGrid,
    TableGrid,
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


class IQ4_NL(GridQuantType, qtype=GGMLQuantizationType.IQ4_NL):
    uses_imatrix = True
    level_min, level_max = 0, 15  # indices into kvalues_iq4nl

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = transposed_blocks(rows, 32)
        im = None if imatrix is None else transposed_imatrix(imatrix, rows.shape[0], 32)
        scale = iq4_block_scales(xt, iq4_weights(xt, 32, im))
        out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(scale)
        cls.write_levels(out, iq4_indices(xt, scale).T)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        return TableGrid(scale=read_half(blocks, 0), table=IQ4NL_VALUES, sub_size=32)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_nibbles(blocks[:, 2:])

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 2:] = pack_nibbles(levels.T)
