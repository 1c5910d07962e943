"""Rounding primitives shared by the quantizers, each equal to its ggml counterpart bit for bit."""

from __future__ import annotations

import numpy as np

F32 = np.float32
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: float32 round-half-even via the 1.5*2^23 bit trick (int32 result)."""
    y = (np.asarray(x, dtype=np.float32) + _MAGIC).view(np.int32)
    return (y & 0x007FFFFF) - 0x00400000


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero (np.round is half-even, which is wrong here). float32 result."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    f = np.floor(a)
    r = f + np.floor(np.float32(2) * (a - f))
    return np.copysign(r, x).astype(np.float32)


def fp16_round(x: np.ndarray) -> np.ndarray:
    """Store as fp16 and read back, as ggml does when it re-derives quants from a stored scale."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
