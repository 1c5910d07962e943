"""F32, F16 and BF16 "block" types (block size 1), converted exactly as ggml_quantize_chunk does."""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.quants.base import QuantType


class F32(QuantType, qtype=GGMLQuantizationType.F32):
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return np.ascontiguousarray(rows, dtype="<f4").view(np.uint8)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        return np.ascontiguousarray(data).view("<f4").astype(np.float32)


class F16(QuantType, qtype=GGMLQuantizationType.F16):
    # NumPy's float32->float16 cast is round-to-nearest-even, equal to ggml's for every non-NaN input.
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return rows.astype("<f2").view(np.uint8)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        return np.ascontiguousarray(data).view("<f2").astype(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round-to-nearest-even; NaN becomes a quiet NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def quiet_bf16_nans(bits: np.ndarray) -> np.ndarray:
    """f32_to_bf16_bits(bf16_bits_to_f32(bits)) without the float32 round trip: widening is exact and the
    rounding of an exact value is the identity, so only a NaN changes (its quiet bit 0x40 is set). Returns
    `bits` itself (no copy) when it holds no NaN with the quiet bit clear, the usual case."""
    flat = bits.reshape(-1).view(np.uint16)
    step = 1 << 16  # cache-sized pieces: the scan reads each value once and allocates nothing per piece
    magnitude = np.empty(step, dtype=np.uint16)
    signalling = np.empty(step, dtype=bool)
    out: np.ndarray | None = None
    for start in range(0, flat.size, step):
        piece = flat[start : start + step]
        n = piece.size
        # Above 0x7F80 once the quiet bit is masked: every NaN that is not the bare quiet NaN (setting its bit
        # again is harmless); 0x7FC0 and the infinities stay at or below it.
        np.bitwise_and(piece, 0x7FBF, out=magnitude[:n])
        np.greater(magnitude[:n], 0x7F80, out=signalling[:n])
        if signalling[:n].any():
            if out is None:
                out = flat.copy()
            out[start : start + n][signalling[:n]] |= 0x40
    return bits if out is None else out.reshape(bits.shape)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class BF16(QuantType, qtype=GGMLQuantizationType.BF16):
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return f32_to_bf16_bits(rows).astype("<u2").view(np.uint8)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        return bf16_bits_to_f32(np.ascontiguousarray(data).view("<u2"))
