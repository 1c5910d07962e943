"""MLX affine quantization as mlx-lm loads it (formats/packed-safetensors.md): w = scales * q + biases, q unsigned."""

from __future__ import annotations

import numpy as np

from quantcli.quants.packed.base import PackedFormat, Scheme, config_int, grouped, round_to
from quantcli.quants.packed.bits import pack_rows, packed_words, unpack_rows


class Mlx(PackedFormat, name="mlx"):
    bits_allowed = (2, 3, 4, 5, 6, 8)
    parts = ("weight", "scales", "biases")

    @classmethod
    def layout(cls, out: int, n: int, scheme: Scheme) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {
            "weight": (np.dtype("<u4"), (out, packed_words(n, scheme.bits))),
            "scales": (np.dtype(scheme.np_dtype), (out, n // scheme.group_size)),
            "biases": (np.dtype(scheme.np_dtype), (out, n // scheme.group_size)),
        }

    @classmethod
    def quantize(cls, weight: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
        out, n = weight.shape
        levels = (1 << scheme.bits) - 1
        g = grouped(weight, scheme.group_size)
        lo, hi = g.min(axis=-1), g.max(axis=-1)
        # Min/max affine grid; scale and bias rounded to the model dtype first so q fits what is stored.
        scale = round_to((hi - lo) / np.float32(levels), scheme.dtype)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        bias = round_to(lo, scheme.dtype)
        q = np.clip(np.rint((g - bias[..., None]) / scale[..., None]), 0, levels).astype(np.uint8)
        return {
            "weight": pack_rows(q.reshape(out, n), scheme.bits),
            "scales": scale.astype(scheme.np_dtype),
            "biases": bias.astype(scheme.np_dtype),
        }

    @classmethod
    def gptq_scale_dtype(cls, scheme: Scheme) -> str | None:
        return scheme.dtype

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, scheme: Scheme
    ) -> dict[str, np.ndarray]:
        # The symmetric grid as an affine one: q = code + 2^(bits-1), bias = -2^(bits-1)·scale (exact: a
        # power-of-two multiple of a value of the model dtype).
        out, n = codes.shape
        half = 1 << (scheme.bits - 1)
        scale = np.asarray(scales, dtype=np.float32)
        return {
            "weight": pack_rows((codes.astype(np.int16) + half).astype(np.uint8), scheme.bits),
            "scales": scale.astype(scheme.np_dtype),
            "biases": (scale * np.float32(-half)).astype(scheme.np_dtype),
        }

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        scale = np.asarray(tensors["scales"]).astype(np.float32)
        bias = np.asarray(tensors["biases"]).astype(np.float32)
        out, ngroups = scale.shape
        n = ngroups * scheme.group_size
        q = unpack_rows(tensors["weight"], scheme.bits, n).astype(np.float32).reshape(out, ngroups, -1)
        # MLX computes in the model dtype: the product is rounded, then the sum.
        prod = round_to(q * scale[..., None], scheme.dtype)
        return round_to(prod + bias[..., None], scheme.dtype).reshape(out, n)

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        out, groups = parts["scales"]
        return out, groups * scheme.group_size

    @classmethod
    def config(cls, scheme: Scheme, ignore: list[str]) -> dict[str, object]:
        q = {"group_size": scheme.group_size, "bits": scheme.bits, "mode": "affine"}
        return {"quantization": dict(q), "quantization_config": dict(q)}

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        q = config.get("quantization")
        if not isinstance(q, dict) or q.get("mode", "affine") != "affine":
            return None
        dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        return Scheme(config_int(q, "bits", "quantization"), config_int(q, "group_size", "quantization"), str(dtype))

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.scales" in names
