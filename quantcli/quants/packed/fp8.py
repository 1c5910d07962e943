"""FP8 weights with their scales, read back dequantized (never written): compressed-tensors
`float-quantized` (`weight_scale`: per tensor, channel, group or block) and the DeepSeek/Qwen layout
(`quant_method: fp8`, `weight_scale_inv` per 128x128 block). formats/packed-safetensors.md, "Pre-quantized
inputs", says what is read and what is refused.

The float ops are the clients': compressed-tensors multiplies the FP8 value by the scale in the scale's
dtype and transformers stores that in the model dtype; transformers' FP8 loader (`Fp8Dequantize`)
multiplies in float32 and casts to the model dtype. FP8 -> float32 is exact, and NumPy's float32 multiply
rounds like torch's, so the same roundings in the same order give the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.quants.packed.base import PackedFormat, Scheme, round_through, round_to
from quantcli.quants.packed.ct import ct_weights, model_dtype

_FP8_DTYPES = ("float8_e4m3fn", "float8_e5m2")


def _fp8_values(weight: np.ndarray) -> np.ndarray:
    if weight.dtype.name not in _FP8_DTYPES:
        raise InputInvalid(f"weight is {weight.dtype.name}, expected FP8 (F8_E4M3 or F8_E5M2)")
    return weight.astype(np.float32)


def _expand_blocks(scale: np.ndarray, shape: tuple[int, int], block: tuple[int, int]) -> np.ndarray:
    """One scale per (rows x cols) block, the last blocks partial: repeated over the weight and trimmed."""
    out, n = shape
    want = (-(-out // block[0]), -(-n // block[1]))
    if scale.shape != want:
        raise InputInvalid(f"block scales are {list(scale.shape)}, expected {list(want)} for {block[0]}x{block[1]} blocks")
    return np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)[:out, :n]


class _Fp8Format(PackedFormat):
    """FP8 checkpoints keep the weight's own shape (one FP8 value per weight); read only."""

    writable = False

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        out, n = parts["weight"]
        return out, n


class CompressedTensorsFp8(_Fp8Format, name="ct-fp8"):
    """compressed-tensors `float-quantized`: `weight` (FP8) and `weight_scale`."""

    # input_scale: static activation quantization, dropped (formats/packed-safetensors.md)
    parts = ("weight", "weight_scale", "input_scale")

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        w = _fp8_values(np.asarray(tensors["weight"]))
        if w.ndim != 2:
            raise InputInvalid(f"weight is {w.ndim}-D, expected a matrix")
        stored = np.asarray(tensors["weight_scale"])
        scale = stored.astype(np.float32)
        out, n = w.shape
        if scheme.block is not None:
            full = _expand_blocks(scale, (out, n), scheme.block)
        elif scale.size == 1:  # strategy tensor
            full = scale.reshape(1, 1)
        elif scale.shape == (out, 1):  # channel
            full = scale
        elif scale.ndim == 2 and scale.shape[0] == out and scheme.group_size and scale.shape[1] * scheme.group_size == n:
            full = np.repeat(scale, scheme.group_size, axis=1)
        else:
            raise InputInvalid(f"weight_scale is {list(stored.shape)}, which does not fit a weight of {[out, n]}")
        return round_through(w * full, stored, scheme.dtype)

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") != "compressed-tensors" or qc.get("format") != "float-quantized":
            return None
        w = ct_weights(qc, "float-quantized")
        if w.get("type") != "float" or int(w.get("num_bits", 0)) != 8:
            raise Unsupported("compressed-tensors float-quantized checkpoint: only 8-bit float (FP8) weights are supported")
        if not w.get("symmetric", True) or w.get("dynamic"):
            raise Unsupported("compressed-tensors FP8 checkpoint: only static symmetric weight scales are supported")
        strategy = w.get("strategy")
        block: tuple[int, int] | None = None
        if strategy == "block":
            bs = w.get("block_structure")
            if not (isinstance(bs, list) and len(bs) == 2 and all(isinstance(v, int) and v > 0 for v in bs)):
                raise Unsupported(f"compressed-tensors FP8 checkpoint: block_structure {bs!r} is not [rows, cols]")
            block = (bs[0], bs[1])
        elif strategy not in ("tensor", "channel", "group"):
            raise Unsupported(f"compressed-tensors FP8 checkpoint: weight strategy {strategy!r} is not supported")
        group = int(w["group_size"]) if strategy == "group" else 0
        return Scheme(8, group, model_dtype(config), block)

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.weight_scale" in names and f"{module}.weight" in names


class Fp8BlockScaled(_Fp8Format, name="fp8"):
    """`quant_method: fp8` (DeepSeek-V3, Qwen3-FP8): `weight` (FP8) and `weight_scale_inv`, a float32
    multiplier per `weight_block_size` block (despite its name it multiplies, as DeepSeek's own
    weight_dequant, transformers and llama.cpp's converter use it)."""

    # activation_scale / input_scale: static activation scales, dropped (formats/packed-safetensors.md)
    parts = ("weight", "weight_scale_inv", "activation_scale", "input_scale")

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        w = _fp8_values(np.asarray(tensors["weight"]))
        if w.ndim != 2:
            raise InputInvalid(f"weight is {w.ndim}-D, expected a matrix")
        scale = np.asarray(tensors["weight_scale_inv"]).astype(np.float32)
        if scheme.block is not None:
            full = _expand_blocks(scale, w.shape, scheme.block)
        elif scale.size == 1:
            full = scale.reshape(1, 1)
        else:
            raise InputInvalid(f"weight_scale_inv is {list(scale.shape)} but the config has no weight_block_size")
        # transformers: (fp8 -> float32) * (scale -> float32), then .to(model dtype).
        return round_to(w * full, scheme.dtype)

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc: dict[str, Any] = config.get("quantization_config") or {}
        if qc.get("quant_method") != "fp8":
            return None
        if qc.get("fmt", "e4m3") not in ("e4m3", "float8_e4m3fn"):
            raise Unsupported(f"fp8 checkpoint with fmt {qc.get('fmt')!r} is not supported (only e4m3)")
        if qc.get("scale_fmt") not in (None, "float32", "fp32"):
            raise Unsupported(f"fp8 checkpoint with scale_fmt {qc.get('scale_fmt')!r} is not supported")
        bs = qc.get("weight_block_size")
        block: tuple[int, int] | None = None
        if bs is not None:
            if not (isinstance(bs, list) and len(bs) == 2 and all(isinstance(v, int) and v > 0 for v in bs)):
                raise Unsupported(f"fp8 checkpoint: weight_block_size {bs!r} is not [rows, cols]")
            block = (bs[0], bs[1])
        return Scheme(8, 0, model_dtype(config), block)

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.weight_scale_inv" in names and f"{module}.weight" in names
