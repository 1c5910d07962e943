"""IQ4_XS (256-blocks: fp16 super-scale, 6-bit sub-block scales, IQ4_NL table indices).

quantize_iq4_xs -> quantize_row_iq4_nl_impl(256, 32, ..., ntry=7): sigma2 = 2*Σx²/256 per super-block,
per-32 scale search as IQ4_NL, then D = -max_scale/32 and 6-bit codes l = clamp(nearest_int(s/D), -32, 31).
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import (
    F32,
    IQ4NL_VALUES,
    QK_K,
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


class IQ4_XS(GridQuantType, qtype=GGMLQuantizationType.IQ4_XS):
    uses_imatrix = True
    level_min, level_max = 0, 15  # indices into kvalues_iq4nl

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = transposed_blocks(rows, 32)
        im = None if imatrix is None else transposed_imatrix(imatrix, rows.shape[0], 32)
        scales = iq4_block_scales(xt, iq4_weights(xt, QK_K, im)).reshape(-1, 8)  # (NB, 8)
        # max_scale: signed scale of largest magnitude, the first one on ties (strict >, from 0)
        abs_s = np.abs(scales)
        first = np.argmax(abs_s, axis=1)
        max_scale = scales[np.arange(scales.shape[0]), first]
        max_scale = np.where(abs_s.max(axis=1) > 0, max_scale, F32(0.0)).astype(F32)
        d = (-max_scale) / F32(32)
        with np.errstate(divide="ignore", over="ignore"):
            inv = np.where(d != 0, F32(1.0) / d, F32(0.0)).astype(F32)
            codes = np.clip(np.rint(inv[:, None] * scales), F32(-32), F32(31))  # nearest_int, in range
        sub_scale = (d[:, None] * codes).reshape(-1)  # dl = d * l with the unrounded d
        qt = iq4_indices(xt, sub_scale)  # (32, NB*8)
        ls = (codes + F32(32)).astype(np.uint8)  # (NB, 8), 0..63

        out = np.empty((scales.shape[0], cls.type_size), dtype=np.uint8)
        out[:, 0:2] = half_bytes(d)
        high = (ls >> np.uint8(4)).astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))
        out[:, 2:4] = np.bitwise_or.reduce(high, axis=1).astype("<u2").view(np.uint8).reshape(-1, 2)
        low = ls & np.uint8(0x0F)
        out[:, 4:8] = low[:, 0::2] | (low[:, 1::2] << np.uint8(4))
        cls.write_levels(out, qt.T.reshape(-1, QK_K))
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def grid(cls, blocks: np.ndarray) -> LevelGrid:
        d = read_half(blocks, 0)  # (NB, 1)
        high = np.ascontiguousarray(blocks[:, 2:4]).view("<u2").astype(np.int32)  # (NB, 1)
        low = blocks[:, 4:8].astype(np.int32)
        sub = np.arange(8)
        ls = ((low[:, sub // 2] >> (4 * (sub % 2))) & 0xF) | (((high >> (2 * sub)) & 3) << 4)
        # C: dl = d * (ls - 32), then dl * kvalues_iq4nl[q]
        return TableGrid(scale=d * (ls - 32).astype(F32), table=IQ4NL_VALUES, sub_size=32)

    @classmethod
    def levels(cls, blocks: np.ndarray) -> np.ndarray:
        return unpack_nibbles(blocks[:, 8:].reshape(-1, 16)).reshape(-1, QK_K)

    @classmethod
    def write_levels(cls, blocks: np.ndarray, levels: np.ndarray) -> None:
        blocks[:, 8:] = pack_nibbles(levels.reshape(-1, 32).T).reshape(-1, 128)
