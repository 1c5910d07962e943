"""F32, F16 and BF16 "block" types (block size 1), converted exactly as ggml_quantize_chunk does."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

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


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class BF16(QuantType, qtype=GGMLQuantizationType.BF16):
    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return f32_to_bf16_bits(rows).astype("<u2").view(np.uint8)

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        return bf16_bits_to_f32(np.ascontiguousarray(data).view("<u2"))
