"""compressed-tensors `pack-quantized`, symmetric int, group strategy (formats/packed-safetensors.md).

Read back also with GPTQ activation ordering: `actorder: "static"`/`"weight"` (llm-compressor's default)
keeps contiguous groups and stores no g_idx; `"group"` stores `weight_g_idx`, read as compressed-tensors
0.12 did (it was dropped in 0.20).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.quants.packed.base import (
    PackedFormat,
    Scheme,
    config_int,
    config_object,
    group_index,
    grouped,
    round_through,
    round_to,
)
from quantcli.quants.packed.bits import pack_rows, packed_words, unpack_rows

CT_VERSION = "0.20.0"


class CompressedTensors(PackedFormat, name="ct"):
    # 3/5/6/7-bit packing changed layout in compressed-tensors 0.20 (dense across words); readers disagree.
    bits_allowed = (2, 4, 8)
    # input_scale / input_zero_point: static activation quantization, dropped (formats/packed-safetensors.md)
    parts = ("weight_packed", "weight_scale", "weight_shape", "weight_g_idx", "input_scale", "input_zero_point")

    @classmethod
    def layout(cls, out: int, n: int, scheme: Scheme) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        return {
            "weight_packed": (np.dtype("<i4"), (out, packed_words(n, scheme.bits))),
            "weight_scale": (np.dtype(scheme.np_dtype), (out, n // scheme.group_size)),
            "weight_shape": (np.dtype("<i8"), (2,)),
        }

    @classmethod
    def quantize(cls, weight: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
        out, n = weight.shape
        qmax = (1 << (scheme.bits - 1)) - 1
        g = grouped(weight, scheme.group_size)
        # compressed-tensors' own symmetric rule: scale = max|w| / ((qmax - qmin) / 2), kept in the model dtype.
        absmax = np.abs(g).max(axis=-1)
        scale = round_to(absmax / np.float32((2 * qmax + 1) / 2), scheme.dtype)
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        q = np.clip(np.rint(g / scale[..., None]), -qmax - 1, qmax).astype(np.int16)
        return cls.from_codes(q.reshape(out, n), scale, None, scheme)

    @classmethod
    def gptq_scale_dtype(cls, scheme: Scheme) -> str | None:
        return scheme.dtype

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, scheme: Scheme
    ) -> dict[str, np.ndarray]:
        out, n = codes.shape
        unsigned = (codes.astype(np.int16) + (1 << (scheme.bits - 1))).astype(np.uint8)
        return {
            "weight_packed": pack_rows(unsigned, scheme.bits).view(np.int32),
            "weight_scale": np.asarray(scales, dtype=np.float32).astype(scheme.np_dtype),
            "weight_shape": np.array([out, n], dtype=np.int64),
        }

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        out, n = (int(v) for v in tensors["weight_shape"])
        unsigned = unpack_rows(tensors["weight_packed"], scheme.bits, n).astype(np.int16)
        q = (unsigned - (1 << (scheme.bits - 1))).astype(np.float32)
        stored_scale = np.asarray(tensors["weight_scale"])
        scale = stored_scale.astype(np.float32)
        ngroups = n // scheme.group_size
        if scale.shape != (out, ngroups):
            raise InputInvalid(f"weight_scale is {list(scale.shape)}, expected {[out, ngroups]}")
        g_idx = tensors.get("weight_g_idx")
        if g_idx is not None and np.any(np.asarray(g_idx) == -1):
            g_idx = None  # compressed-tensors' rule: a g_idx holding -1 was never set (column order)
        groups = group_index(g_idx, n, scheme.group_size, ngroups)
        if g_idx is not None and np.any(np.bincount(groups, minlength=ngroups) != scheme.group_size):
            # compressed-tensors dequantizes the columns sorted by g_idx in runs of group_size: that is
            # scale[:, g_idx[j]] only when every group has group_size columns.
            raise Unsupported(f"weight_g_idx does not give every group {scheme.group_size} columns")
        # compressed-tensors multiplies in the scale's dtype (normally the model dtype; the float32 product
        # is exact for a bf16/f16 scale, so one rounding gives its result).
        return round_through(q * scale[:, groups], stored_scale, scheme.dtype)

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        out, groups = parts["weight_scale"]
        return out, groups * scheme.group_size

    @classmethod
    def config(cls, scheme: Scheme, ignore: list[str]) -> dict[str, object]:
        return {
            "quantization_config": {
                "config_groups": {
                    "group_0": {
                        "format": "pack-quantized",
                        "input_activations": None,
                        "output_activations": None,
                        "targets": ["Linear"],
                        "weights": {
                            "actorder": None,
                            "block_structure": None,
                            "dynamic": False,
                            "group_size": scheme.group_size,
                            "num_bits": scheme.bits,
                            "observer": "minmax",
                            "observer_kwargs": {},
                            "strategy": "group",
                            "symmetric": True,
                            "type": "int",
                        },
                    }
                },
                "format": "pack-quantized",
                "global_compression_ratio": None,
                "ignore": ignore,
                "kv_cache_scheme": None,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
                "sparsity_config": {},
                "transform_config": {},
                "version": CT_VERSION,
            }
        }

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") != "compressed-tensors" or qc.get("format") == "float-quantized":
            return None  # float-quantized: quants/packed/fp8.py
        w = ct_weights(qc, "pack-quantized")
        if w.get("type") != "int" or not w.get("symmetric", False) or w.get("strategy") != "group":
            raise Unsupported("compressed-tensors checkpoint: only symmetric int group quantization is supported")
        where = "quantization_config weights"
        bits = config_int(w, "num_bits", where)
        if bits not in cls.bits_allowed:
            raise Unsupported(
                f"compressed-tensors checkpoint: {bits}-bit pack-quantized is not supported "
                f"(only {', '.join(map(str, cls.bits_allowed))})"
            )
        return Scheme(bits, config_int(w, "group_size", where), model_dtype(config))

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.weight_packed" in names


def model_dtype(config: dict) -> str:
    """The dtype transformers loads the model in (`dtype="auto"`): the checkpoint's own."""
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise Unsupported(f"pre-quantized checkpoint with model dtype {dtype!r} (bfloat16, float16, float32)")
    return dtype


def ct_weights(qc: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The weight arguments of a compressed-tensors config with one `fmt` group; what cannot be read
    exactly (several groups, online transforms, output activations) is refused in one line."""
    groups = list(config_object(qc.get("config_groups"), "quantization_config.config_groups").values())
    if len(groups) != 1 or qc.get("format") != fmt or not isinstance(groups[0], dict):
        raise Unsupported(f"compressed-tensors checkpoint: only one {fmt} config group is supported")
    if qc.get("transform_config"):
        # Rotations applied online to the activations (SpinQuant/QuIP): the weights alone are not the model.
        raise Unsupported("compressed-tensors checkpoint with transform_config (online rotations) is not supported")
    if groups[0].get("output_activations"):
        raise Unsupported("compressed-tensors checkpoint with quantized output activations is not supported")
    w = groups[0].get("weights")
    if not isinstance(w, dict):
        raise Unsupported("compressed-tensors checkpoint: the config group quantizes no weights")
    return w
