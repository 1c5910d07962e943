"""GPTQ v1 (`checkpoint_format: gptq`), symmetric (formats/packed-safetensors.md).

We write desc_act=false; we read desc_act=true too: each column's group is its `g_idx` entry, as
GPTQModel's dequantize_weight and llama.cpp's converter index scales and zeros with g_idx.
"""

from __future__ import annotations

import numpy as np

from quantcli.errors import Unsupported
from quantcli.quants.packed.base import PackedFormat, Scheme, config_int, group_index, grouped, round_to
from quantcli.quants.packed.bits import pack_rows, packed_words, unpack_rows


class Gptq(PackedFormat, name="gptq"):
    bits_allowed = (4, 8)
    parts = ("qweight", "qzeros", "scales", "g_idx")

    @classmethod
    def layout(cls, out: int, n: int, scheme: Scheme) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        groups = n // scheme.group_size
        return {
            "qweight": (np.dtype("<i4"), (packed_words(n, scheme.bits), out)),
            "qzeros": (np.dtype("<i4"), (groups, packed_words(out, scheme.bits))),
            "scales": (np.dtype("<f2"), (groups, out)),
            "g_idx": (np.dtype("<i4"), (n,)),
        }

    @classmethod
    def quantize(cls, weight: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
        out, n = weight.shape
        maxq = (1 << scheme.bits) - 1
        zero = (maxq + 1) // 2
        g = grouped(weight, scheme.group_size)
        # GPTQ's symmetric grid: scale = 2*max|w| / maxq around the fixed zero point 2**(b-1); scales are fp16.
        absmax = np.abs(g).max(axis=-1)
        scale = round_to(np.float32(2) * absmax / np.float32(maxq), "float16")
        scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
        q = np.clip(np.rint(g / scale[..., None]), -zero, zero - 1).astype(np.int16).reshape(out, n)
        return cls.from_codes(q, scale, None, scheme)

    @classmethod
    def gptq_scale_dtype(cls, scheme: Scheme) -> str | None:
        return "float16"

    carries_g_idx = True

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, scales: np.ndarray, g_idx: np.ndarray | None, scheme: Scheme
    ) -> dict[str, np.ndarray]:
        out, n = codes.shape
        zero = 1 << (scheme.bits - 1)
        q = (codes.astype(np.int16) + zero).astype(np.uint8)
        ngroups = n // scheme.group_size
        # v1 stores zero - 1 (the historical AutoGPTQ off-by-one that every v1 reader undoes).
        zeros = np.full((ngroups, out), zero - 1, dtype=np.uint8)
        if g_idx is None:
            g_idx = np.arange(n, dtype=np.int32) // scheme.group_size
        return {
            "qweight": np.ascontiguousarray(pack_rows(q, scheme.bits).T).view(np.int32),  # packed along the input dim
            "qzeros": pack_rows(zeros, scheme.bits).view(np.int32),
            "scales": np.ascontiguousarray(np.asarray(scales, dtype=np.float32).T).astype(np.float16),
            "g_idx": np.asarray(g_idx, dtype=np.int32),
        }

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        scales = np.asarray(tensors["scales"]).astype(np.float32)  # (ngroups, out)
        ngroups, out = scales.shape
        n = ngroups * scheme.group_size
        g_idx = group_index(tensors.get("g_idx"), n, scheme.group_size, ngroups)
        q = unpack_rows(np.ascontiguousarray(np.asarray(tensors["qweight"]).T), scheme.bits, n).T  # (n, out)
        zeros = unpack_rows(tensors["qzeros"], scheme.bits, out).astype(np.float32) + 1  # v1: stored z - 1
        w = (q.astype(np.float32) - zeros[g_idx]) * scales[g_idx]
        return round_to(np.ascontiguousarray(w.T), "float16")

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        groups, out = parts["scales"]
        return out, groups * scheme.group_size

    @classmethod
    def config(cls, scheme: Scheme, ignore: list[str]) -> dict[str, object]:
        return {
            "quantization_config": {
                "bits": scheme.bits,
                "checkpoint_format": "gptq",
                "desc_act": scheme.act_order,
                "group_size": scheme.group_size,
                "lm_head": False,
                "quant_method": "gptq",
                "sym": True,
                "true_sequential": True,
            }
        }

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") != "gptq":
            return None
        if qc.get("checkpoint_format", "gptq") != "gptq":
            raise Unsupported(f"GPTQ checkpoint_format {qc.get('checkpoint_format')!r} is not supported (only v1 'gptq')")
        where = "quantization_config"
        return Scheme(config_int(qc, "bits", where), config_int(qc, "group_size", where), "float16")

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.qweight" in names
