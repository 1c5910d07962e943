"""MXFP4 (32-blocks, E8M0 shared exponent, 4-bit E2M1 codes) = quantize_row_mxfp4_ref; imatrix ignored.

The exponent is `(uint8)(floorf(log2f(amax)) - 2 + 127)`. glibc's log2f rounds to float32, so just
below a power of two it returns the next integer (e.g. floorf(log2f(8 - ulp)) == 3): a frexp exponent
alone is wrong for those inputs. `floor_log2f` reproduces it exactly (see its docstring for the proof).
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.ggml import F32, SlicedQuantType, pack_nibbles, transposed_blocks, unpack_nibbles

# Doubled E2M1 values (ggml's kvalues_mxfp4); the scale is decoded as half the E8M0 value to match.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
_KV_F32 = KVALUES_MXFP4.astype(F32)


def floor_log2f(a: np.ndarray) -> np.ndarray:
    """floorf(log2f(a)) of positive finite float32 `a`, equal to glibc's for every such input.

    log2 is evaluated in float64 (error < 1 float64 ulp), rounded once to float32, then floored: this is
    a correctly rounded log2f, and glibc 2.36's log2f agrees with it on whether the result reaches the
    next integer for all 2^31 - 2^23 - 1 positive finite floats (exhaustive run, 7456 inputs round up;
    see formats/ggml-blocks.md). tests/test_quants_simple.py re-checks every binade's top mantissas
    against the C library's log2f.
    """
    return np.floor(np.log2(np.asarray(a, dtype=np.float64)).astype(F32))


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """GGML_E8M0_TO_FP32_HALF: 2^(e-128) as float32, with the denormal patterns for e < 2."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


def shared_exponent(amax: np.ndarray) -> np.ndarray:
    """e = amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0 (float->uint8 wraps like x86 GCC)."""
    positive = amax > 0
    safe = np.where(positive, amax, F32(1.0))
    e = (floor_log2f(safe) - F32(2) + F32(127)).astype(np.int32) & 0xFF
    return np.where(positive, e, 0).astype(np.uint8)


def best_index_fp4(xt: np.ndarray, d: np.ndarray) -> np.ndarray:
    """best_index_mxfp4: first index minimising |kv[i]*d - x| (strict <) for every element."""
    best_err = np.abs(_KV_F32[0] * d - xt)
    best = np.zeros(xt.shape, dtype=np.uint8)
    err = np.empty_like(best_err)
    better = np.empty(xt.shape, dtype=bool)
    for i in range(1, 16):
        np.subtract(_KV_F32[i] * d, xt, out=err)
        np.abs(err, out=err)
        np.less(err, best_err, out=better)
        np.copyto(best, np.uint8(i), where=better)
        np.minimum(best_err, err, out=best_err)
    return best


def from_openai_blocks(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OpenAI's MXFP4 checkpoint layout (gpt-oss `*_blocks` (..., n_blocks, 16): element 2i in byte i's low
    nibble, 2i+1 in its high nibble; `*_scales` (..., n_blocks): the E8M0 exponent) -> ggml block_mxfp4
    rows (..., n_blocks * 17): the exponent byte, then element j in qs[j]'s low and j+16 in its high nibble.
    The same byte as E8M0 (2^(e-127) times E2M1) and as ggml's (half of 2^(e-127) times the doubled
    values), so the numbers are unchanged: what GptOssModel.repack_mxfp4 writes."""
    codes = np.empty((*blocks.shape[:-1], 32), dtype=np.uint8)
    codes[..., 0::2] = blocks & 0x0F
    codes[..., 1::2] = blocks >> 4
    out = np.empty((*blocks.shape[:-1], 17), dtype=np.uint8)
    out[..., 0] = scales
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    return out.reshape(*blocks.shape[:-2], -1)


class MXFP4(SlicedQuantType, qtype=GGMLQuantizationType.MXFP4):
    uses_imatrix = False
    searches_without_imatrix = False

    @classmethod
    def quantize_piece(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        xt = transposed_blocks(rows, 32)
        e = shared_exponent(np.maximum(xt.max(axis=0), -xt.min(axis=0)))
        qt = best_index_fp4(xt, e8m0_to_fp32_half(e)[None, :])
        out = np.empty((xt.shape[1], cls.type_size), dtype=np.uint8)
        out[:, 0] = e
        out[:, 1:] = pack_nibbles(qt)
        return out.reshape(rows.shape[0], -1)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        blocks = data.reshape(-1, cls.type_size)
        d = e8m0_to_fp32_half(blocks[:, 0])[:, None]
        q = _KV_F32[unpack_nibbles(blocks[:, 1:])]
        with np.errstate(over="ignore"):  # e = 255 and |q| >= 2 overflow to inf, as in C
            return (q * d).reshape(data.shape[0], ncols)
