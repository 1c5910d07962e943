"""What ggml's CPU backend does to activations before a matmul with a stored weight (optional emulation).

ggml-cpu converts the F32 input rows of `mul_mat` to the weight type's `vec_dot_type`
(ggml-cpu.c type_traits_cpu): F16 weights see F16-rounded activations, BF16 weights BF16-rounded ones,
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL/MXFP4 weights see activations quantized to Q8_0/Q8_1 (blocks of 32,
d = amax/127 stored as fp16, q = round-half-even(x·127/amax) — the AVX2 quantize_row_q8_0), and k-quants,
IQ4_XS and TQ* see Q8_K (blocks of 256, quantize_row_q8_K_ref: iscale = −127/max of the signed largest
value, q = min(127, nearest_int(iscale·x)), d = 1/iscale in float32). With `emulate` on, the runtime
applies the same round trip, so its PPL/KLD of a quantized file track llama.cpp's instead of the
float32 ideal; the weights themselves are always the exact dequantized values.

Speed: these round trips touch every activation of every matmul. They run in the C extension when it is
loaded (`qc_round_trip`: the F16C instruction for F16, both cores, writing straight into the output), else in
NumPy in place on slabs that stay in the CPU cache, with integer bit operations on float32 views (NumPy's
float16 cast is a scalar loop, ~6x slower). Both are bit-identical to the plain NumPy formulation for every
non-NaN input (tests/test_runtime.py).
"""

from __future__ import annotations

import numpy as np

from quantcli.gguf_constants import GGMLQuantizationType as T
from quantcli.quants.base import native_enabled

_Q8_0_USERS = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.MXFP4}
_Q8_K_USERS = {
    T.Q2_K,
    T.Q3_K,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
    T.IQ4_XS,
    T.TQ1_0,
    T.TQ2_0,
    T.IQ2_XXS,
    T.IQ2_XS,
    T.IQ2_S,
    T.IQ3_XXS,
    T.IQ3_S,
    T.IQ1_S,
    T.IQ1_M,
}


# Elements per slab: 128 KiB of float32, so the several passes over a slab hit the L2 cache.
_SLAB = 1 << 15
_F16_TINY = np.float32(2.0**-14)  # smallest normal float16; below it float16 steps are 2**-24


def round_f16_(x: np.ndarray) -> np.ndarray:
    """Round C-contiguous float32 `x` in place to the nearest float16 (ties to even), kept as float32."""
    _flat_view(x)
    if _native_round_trip(T.F16, x, x):
        return x
    return _f16_numpy_(x)


def _f16_numpy_(x: np.ndarray) -> np.ndarray:
    """`round_f16_` in NumPy. Equal to x.astype(float16).astype(float32) for every non-NaN input: the 13 low
    mantissa bits are rounded away with integer adds (a carry into the exponent is the correct result),
    float16 subnormals are rounded to multiples of 2**-24 and |x| >= 65520 becomes inf, both on the few
    elements concerned."""
    flat = _flat_view(x)
    bits = flat.view(np.uint32)
    n = flat.size
    tmp = np.empty(min(n, _SLAB), np.uint32)
    mag = np.empty(min(n, _SLAB), np.float32)
    for s0 in range(0, n, _SLAB):
        s1 = min(n, s0 + _SLAB)
        xs, us, ts, ms = flat[s0:s1], bits[s0:s1], tmp[: s1 - s0], mag[: s1 - s0]
        np.abs(xs, out=ms)
        small = np.flatnonzero(ms < _F16_TINY) if ms.min() < _F16_TINY else None
        tiny = xs[small] if small is not None else None
        np.right_shift(us, 13, out=ts)
        ts &= 1
        ts += 0xFFF
        us += ts
        us &= 0xFFFFE000
        if small is not None:
            xs[small] = np.rint(tiny * np.float32(2.0**24)) * np.float32(2.0**-24)
        if ms.max() >= 65520:
            big = np.flatnonzero(np.abs(xs) >= 65536)
            xs[big] = np.copysign(np.float32(np.inf), xs[big])
    return x


def vec_dot_type(weight_type: T, n: int) -> T | None:
    """The type ggml-cpu converts rows of `n` activations to for a dot product with a `weight_type` row (None:
    they stay float32)."""
    if weight_type in (T.F16, T.BF16):
        return weight_type
    if weight_type in _Q8_0_USERS and n % 32 == 0:
        return T.Q8_0
    if weight_type in _Q8_K_USERS and n % 256 == 0:
        return T.Q8_K
    return None


def vec_dot_round_trip(x: np.ndarray, weight_type: T) -> np.ndarray:
    """The activation rows `x` (float32, (..., n)) as the dot product with a `weight_type` row sees them."""
    kind = vec_dot_type(weight_type, x.shape[-1])
    if kind is None:
        return x
    src = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(src.shape, np.float32)
    if _native_round_trip(kind, src, out):
        return out
    out[...] = src
    return _round_trip_numpy_(out, kind)


def vec_dot_round_trip_(x: np.ndarray, weight_type: T) -> np.ndarray:
    """`vec_dot_round_trip` in place on a C-contiguous float32 array the caller owns; returns `x`."""
    kind = vec_dot_type(weight_type, x.shape[-1])
    if kind is None:
        return x
    _flat_view(x)
    if _native_round_trip(kind, x, x):
        return x
    return _round_trip_numpy_(x, kind)


def _native_round_trip(kind: T, x: np.ndarray, out: np.ndarray) -> bool:
    if not native_enabled():
        return False
    from quantcli import native

    return native.round_trip(kind, x, out)


def _round_trip_numpy_(x: np.ndarray, kind: T) -> np.ndarray:
    if kind == T.F16:
        return _f16_numpy_(x)
    if kind == T.BF16:
        from quantcli.quants.floats import bf16_bits_to_f32, f32_to_bf16_bits

        x[...] = bf16_bits_to_f32(f32_to_bf16_bits(x)).reshape(x.shape)
        return x
    return _q8_0_(x) if kind == T.Q8_0 else _q8_k_(x)


def _flat_view(x: np.ndarray) -> np.ndarray:
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("in-place rounding needs a writable C-contiguous float32 array")
    return x.reshape(-1)


def _q8_0_(x: np.ndarray) -> np.ndarray:
    blocks_all = _flat_view(x).reshape(-1, 32)
    step = _SLAB // 32
    for b0 in range(0, blocks_all.shape[0], step):
        blocks = blocks_all[b0 : b0 + step]
        amax = np.abs(blocks).max(axis=1)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        blocks *= inv[:, None]
        np.rint(blocks, out=blocks)
        blocks *= d[:, None]
    return x


def _q8_k_(x: np.ndarray) -> np.ndarray:
    blocks_all = _flat_view(x).reshape(-1, 256)
    step = _SLAB // 256
    mag = np.empty((min(step, blocks_all.shape[0]), 256), np.float32)
    for b0 in range(0, blocks_all.shape[0], step):
        blocks = blocks_all[b0 : b0 + step]
        ms = mag[: blocks.shape[0]]
        np.abs(blocks, out=ms)
        idx = ms.argmax(axis=1)  # first index of the largest |x|, signed value kept
        signed_max = np.take_along_axis(blocks, idx[:, None], axis=1)[:, 0]
        with np.errstate(divide="ignore"):
            iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0)).astype(np.float32)
            d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
        blocks *= iscale[:, None]
        np.rint(blocks, out=blocks)
        np.minimum(blocks, np.float32(127), out=blocks)
        blocks *= d[:, None]
    return x
