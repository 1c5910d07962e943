"""compressed-tensors `pack-quantized`, symmetric int, group strategy (formats/compressed-tensors.md)."""

from __future__ import annotations

import numpy as np

from quantcli.errors import Unsupported
from quantcli.quants.packed.base import PackedFormat, Scheme, config_int, config_object, grouped, round_to
from quantcli.quants.packed.bits import pack_rows, packed_words, unpack_rows

CT_VERSION = "0.20.0"


class CompressedTensors(PackedFormat, name="ct"):
    # 3/5/6/7-bit packing changed layout in compressed-tensors 0.20 (dense across words); readers disagree.
    bits_allowed = (2, 4, 8)

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
        unsigned = (q + (qmax + 1)).reshape(out, n).astype(np.uint8)
        return {
            "weight_packed": pack_rows(unsigned, scheme.bits).view(np.int32),
            "weight_scale": scale.astype(scheme.np_dtype),
            "weight_shape": np.array([out, n], dtype=np.int64),
        }

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        out, n = (int(v) for v in tensors["weight_shape"])
        unsigned = unpack_rows(tensors["weight_packed"], scheme.bits, n).astype(np.int16)
        q = (unsigned - (1 << (scheme.bits - 1))).astype(np.float32)
        scale = np.asarray(tensors["weight_scale"]).astype(np.float32)
        w = q.reshape(out, -1, scheme.group_size) * scale[..., None]
        return round_to(w.reshape(out, n), scheme.dtype)

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
        if qc.get("quant_method") != "compressed-tensors":
            return None
        groups = list(config_object(qc.get("config_groups"), "quantization_config.config_groups").values())
        if len(groups) != 1 or qc.get("format") != "pack-quantized":
            raise Unsupported("compressed-tensors checkpoint: only one pack-quantized config group is supported")
        group = config_object(groups[0], "quantization_config.config_groups entry")
        w = config_object(group.get("weights"), "quantization_config weights")
        if w.get("type") != "int" or not w.get("symmetric", False) or w.get("strategy") != "group":
            raise Unsupported("compressed-tensors checkpoint: only symmetric int group quantization is supported")
        if w.get("actorder"):
            raise Unsupported("compressed-tensors checkpoint: activation ordering (g_idx) is not supported")
        dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        where = "quantization_config weights"
        return Scheme(config_int(w, "num_bits", where), config_int(w, "group_size", where), str(dtype))

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.weight_packed" in names
