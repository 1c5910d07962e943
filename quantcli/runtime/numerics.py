"""What ggml's CPU backend does to activations before a matmul with a stored weight (optional emulation).

ggml-cpu converts the F32 input rows of `mul_mat` to the weight type's `vec_dot_type`
(ggml-cpu.c type_traits_cpu): F16 weights see F16-rounded activations, BF16 weights BF16-rounded ones,
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL/MXFP4 weights see activations quantized to Q8_0/Q8_1 (blocks of 32,
d = amax/127 stored as fp16, q = round-half-even(x·127/amax) — the AVX2 quantize_row_q8_0), and k-quants,
IQ4_XS and TQ* see Q8_K (blocks of 256, quantize_row_q8_K_ref: iscale = −127/max of the signed largest
value, q = min(127, nearest_int(iscale·x)), d = 1/iscale in float32). With `emulate` on, the runtime
applies the same round trip, so its PPL/KLD of a quantized file track llama.cpp's instead of the
float32 ideal; the weights themselves are always the exact dequantized values.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

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


def vec_dot_round_trip(x: np.ndarray, weight_type: T) -> np.ndarray:
    """The activation rows `x` (float32, (..., n)) as the dot product with a `weight_type` row sees them."""
    if weight_type == T.F32:
        return x
    if weight_type == T.F16:
        return x.astype(np.float16).astype(np.float32)
    if weight_type == T.BF16:
        from quantcli.quants.floats import bf16_bits_to_f32, f32_to_bf16_bits

        return bf16_bits_to_f32(f32_to_bf16_bits(x)).reshape(x.shape)
    n = x.shape[-1]
    if weight_type in _Q8_0_USERS and n % 32 == 0:
        return _q8_0(x)
    if weight_type in _Q8_K_USERS and n % 256 == 0:
        return _q8_k(x)
    return x


def _q8_0(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[:, None])
    return (q * d[:, None]).astype(np.float32).reshape(x.shape)


def _q8_k(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, 256)
    idx = np.abs(blocks).argmax(axis=1)  # first index of the largest |x|, signed value kept
    signed_max = blocks[np.arange(blocks.shape[0]), idx]
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.float32(127), np.rint(iscale[:, None] * blocks))
    return (q * d[:, None]).astype(np.float32).reshape(x.shape)
