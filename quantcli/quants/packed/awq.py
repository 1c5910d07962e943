"""AutoAWQ GEMM (`quant_method: awq`, `version: gemm`), 4-bit asymmetric (formats/packed-safetensors.md).

Unlike GPTQ, the packing runs along the output dimension: `qweight` is int32 (in, out/8) and `qzeros`
int32 (in/group, out/8), eight 4-bit codes per word in AWQ's interleaved order (word nibble i holds output
column 8·k + AWQ_ORDER[i]); `scales` are float16 (in/group, out). A weight reads back as
`(q − z) · scale`, rounded to float16 (gptqmodel's `dequantize_gemm`, what transformers runs on CPU).
"""

from __future__ import annotations

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.quants.packed.base import PackedFormat, Scheme, config_int, grouped, round_to
from quantcli.quants.packed.bits import pack_rows, unpack_rows

# Output column of each nibble of a word (AutoAWQ's `order_map`) and its inverse (`AWQ_REVERSE_ORDER`).
AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])
AWQ_REVERSE_ORDER = np.argsort(AWQ_ORDER)
_PACK = 8  # 4-bit codes per int32 word


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (rows, out) -> int32 words (rows, out/8) in AWQ's nibble order."""
    rows, out = codes.shape
    interleaved = np.asarray(codes).reshape(rows, out // _PACK, _PACK)[:, :, AWQ_ORDER].reshape(rows, out)
    return pack_rows(interleaved, 4).view(np.int32)


def unpack_awq(words: np.ndarray, out: int) -> np.ndarray:
    """Inverse of pack_awq: int32 words (rows, out/8) -> uint8 codes (rows, out) in column order."""
    interleaved = unpack_rows(words, 4, out)
    rows = interleaved.shape[0]
    return interleaved.reshape(rows, out // _PACK, _PACK)[:, :, AWQ_REVERSE_ORDER].reshape(rows, out)


def asymmetric_grid(groups: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """AutoAWQ's zero-point grid on (..., group) values: scale = max(max − min, 1e-5) / (2^b − 1), stored as
    float16, zero = clamp(−round(min / scale), 0, 2^b − 1). Returns (float16-valued float32 scales, zeros)."""
    maxq = (1 << bits) - 1
    lo, hi = groups.min(axis=-1), groups.max(axis=-1)
    scale = round_to(np.maximum(hi - lo, np.float32(1e-5)) / np.float32(maxq), "float16")
    zero = np.clip(-np.rint(lo / scale), 0, maxq)
    return scale, zero


class Awq(PackedFormat, name="awq"):
    # AutoAWQ's GEMM layout, and every client's (transformers + gptqmodel, mlx-lm, vLLM), is 4-bit only.
    bits_allowed = (4,)
    parts = ("qweight", "qzeros", "scales")
    # AWQ models run in float16 (AutoAWQ's own, its kernels'): a bfloat16 torch_dtype would make
    # transformers cast the float16 scales to bfloat16 and read other weights than the ones we wrote.
    model_dtype = "float16"

    @classmethod
    def layout(cls, out: int, n: int, scheme: Scheme) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        groups = n // scheme.group_size
        return {
            "qweight": (np.dtype("<i4"), (n, out // _PACK)),
            "qzeros": (np.dtype("<i4"), (groups, out // _PACK)),
            "scales": (np.dtype("<f2"), (groups, out)),
        }

    @classmethod
    def quantize(cls, weight: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
        out, n = weight.shape
        if out % _PACK:
            raise Unsupported(f"--format awq packs 8 output rows per word; {out} rows is not a multiple of 8")
        maxq = (1 << scheme.bits) - 1
        g = grouped(weight, scheme.group_size)
        # q from the float16 scale actually stored, so that (q - z) * scale is what the client computes.
        scale, zero = asymmetric_grid(g, scheme.bits)
        q = np.clip(np.rint(g / scale[..., None]) + zero[..., None], 0, maxq).astype(np.uint8).reshape(out, n)
        return {
            "qweight": pack_awq(np.ascontiguousarray(q.T)),
            "qzeros": pack_awq(np.ascontiguousarray(zero.T).astype(np.uint8)),
            "scales": np.ascontiguousarray(scale.T).astype(np.float16),
        }

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        scales = np.asarray(tensors["scales"]).astype(np.float32)  # (ngroups, out)
        ngroups, out = scales.shape
        n = ngroups * scheme.group_size
        if out % _PACK:
            raise InputInvalid(f"scales has {out} output columns, not a multiple of 8")
        q = unpack_awq(np.asarray(tensors["qweight"]), out).astype(np.float32)  # (n, out)
        zeros = unpack_awq(np.asarray(tensors["qzeros"]), out).astype(np.float32)  # (ngroups, out)
        groups = np.arange(n) // scheme.group_size
        # (q - z) is a small integer, so the float32 product is exact and one rounding gives float16's.
        w = (q - zeros[groups]) * scales[groups]
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
                "group_size": scheme.group_size,
                "modules_to_not_convert": ignore,
                "quant_method": "awq",
                "version": "gemm",
                "zero_point": True,
            }
        }

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") != "awq":
            return None
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise Unsupported(f"AWQ checkpoint version {qc.get('version')!r} is not supported (only 'gemm')")
        if not qc.get("zero_point", True):
            raise Unsupported("AWQ checkpoint without zero_point is not supported")
        where = "quantization_config"
        # `w_bit` / `q_group_size`: AutoAWQ's own quant_config names, found in older checkpoints.
        bits_key = "bits" if "bits" in qc else "w_bit"
        group_key = "group_size" if "group_size" in qc else "q_group_size"
        return Scheme(config_int(qc, bits_key, where), config_int(qc, group_key, where), "float16")

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.qweight" in names and f"{module}.qzeros" in names
