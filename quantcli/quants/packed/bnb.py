"""bitsandbytes checkpoints, read back dequantized (never written): 4-bit NF4/FP4 (`Params4bit`, with or
without nested "double" quantization of the block scales) and LLM.int8 (`Int8Params` with `SCB` row scales).
formats/packed-safetensors.md, "Reading back", says what is read and what is refused.

The float ops are bitsandbytes' own (`dequantize_4bit`, `dequantize_blockwise`, `int8_vectorwise_dequant`,
bitsandbytes 0.50): a 4-bit code is looked up in the float32 NF4/FP4 table and multiplied by its block's
float32 absmax, the product cast to the quant state's dtype. A nested absmax is itself a blockwise 8-bit
code: `nested_quant_map[q] · nested_absmax[block]` in float32, plus the float32 `nested_offset`. An int8
weight is `(q · SCB[row]) · (1/127)` in float32. NumPy's float32 multiply and add round as torch's and
bitsandbytes' kernels do, so the same operations in the same order give the same bits.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.quants.packed.base import MODEL_DTYPES, PackedFormat, Scheme, round_to
from quantcli.quants.packed.ct import model_dtype

# bitsandbytes' 4-bit codes (`functional.get_4bit_type`), float32. Its kernels use these built-in tables: the
# `quant_map` stored with each weight is not read back by `dequantize_4bit`, so it is not read here either.
NF4_CODE = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0],
    dtype=np.float32,
)
FP4_CODE = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32) / np.float32(12)
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}
# The block sizes `dequantize_4bit` accepts.
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUANT_STATE = "weight.quant_state.bitsandbytes__"
# LLM.int8's dequantization constant (1/127 as bitsandbytes spells it), applied in float32.
INT8_RECIPROCAL = np.float32(7.874015718698502e-3)


def _bnb_config(config: dict) -> dict[str, Any] | None:
    qc = config.get("quantization_config") or {}
    return qc if qc.get("quant_method") == "bitsandbytes" else None


def _load_flags(qc: dict[str, Any]) -> tuple[bool, bool]:
    """(load_in_4bit, load_in_8bit) of a bitsandbytes config; exactly one must be set."""
    four = qc.get("load_in_4bit", qc.get("_load_in_4bit", False))
    eight = qc.get("load_in_8bit", qc.get("_load_in_8bit", False))
    if not isinstance(four, bool) or not isinstance(eight, bool) or four == eight:
        raise InputInvalid(
            f"config.json: bitsandbytes quantization_config has load_in_4bit={four!r}, load_in_8bit={eight!r}; "
            "expected exactly one true"
        )
    return four, eight


def parse_quant_state(blob: np.ndarray, quant_type: str) -> dict[str, Any]:
    """The JSON object bitsandbytes packs into `weight.quant_state.bitsandbytes__<type>` (uint8 bytes),
    checked so that dequantizing cannot fail on one of its values."""
    raw = np.asarray(blob)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise InputInvalid(f"quant_state is {raw.dtype} {list(raw.shape)}, expected uint8 bytes")
    try:
        state = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InputInvalid("quant_state is not a JSON object") from None
    if not isinstance(state, dict):
        raise InputInvalid("quant_state is not a JSON object")
    if state.get("quant_type") != quant_type:
        raise Unsupported(f"quant_state quant_type {state.get('quant_type')!r} is not {quant_type!r} (nf4, fp4)")
    blocksize = state.get("blocksize")
    if type(blocksize) is not int or blocksize not in BLOCKSIZES:
        raise Unsupported(f"quant_state blocksize {blocksize!r} is not one of {', '.join(map(str, BLOCKSIZES))}")
    shape = state.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(v) is int and v > 0 for v in shape)):
        raise Unsupported(f"quant_state shape {shape!r} is not a Linear weight [out, in]")
    if state.get("dtype") not in MODEL_DTYPES:
        raise Unsupported(f"quant_state dtype {state.get('dtype')!r} is not one of {', '.join(MODEL_DTYPES)}")
    if "nested_blocksize" in state or "nested_offset" in state:
        nested = state.get("nested_blocksize")
        if type(nested) is not int or nested <= 0:
            raise InputInvalid(f"quant_state nested_blocksize {nested!r} is not a positive integer")
        if state.get("nested_dtype") != "float32":
            raise Unsupported(f"quant_state nested_dtype {state.get('nested_dtype')!r} is not float32")
        offset = state.get("nested_offset")
        if type(offset) not in (int, float) or not math.isfinite(offset):
            raise InputInvalid(f"quant_state nested_offset {offset!r} is not a finite number")
    return state


def _quant_type(tensors: dict[str, Any]) -> str:
    found = [k.removeprefix(QUANT_STATE) for k in tensors if k.startswith(QUANT_STATE)]
    if len(found) != 1 or found[0] not in CODES:
        raise InputInvalid(f"expected one {QUANT_STATE}nf4 or fp4 tensor, found {found or 'none'}")
    return found[0]


def _float_vector(array: np.ndarray, size: int, role: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.kind not in "fV" or a.shape != (size,):
        raise InputInvalid(f"{role} is {a.dtype} {list(a.shape)}, expected {size} floats")
    return a.astype(np.float32)


def _block_scales(tensors: dict[str, np.ndarray], state: dict[str, Any], blocks: int) -> np.ndarray:
    """One float32 absmax per block: stored as is, or (nested) dequantized from its own 8-bit blocks."""
    absmax = np.asarray(tensors["weight.absmax"])
    if "nested_blocksize" not in state:
        return _float_vector(absmax, blocks, "absmax")
    if absmax.dtype != np.uint8 or absmax.shape != (blocks,):
        raise InputInvalid(f"absmax is {absmax.dtype} {list(absmax.shape)}, expected {blocks} uint8 (nested)")
    if "weight.nested_absmax" not in tensors or "weight.nested_quant_map" not in tensors:
        raise InputInvalid("nested quant_state without nested_absmax and nested_quant_map tensors")
    nested = state["nested_blocksize"]
    nested_absmax = _float_vector(tensors["weight.nested_absmax"], -(-blocks // nested), "nested_absmax")
    code = _float_vector(tensors["weight.nested_quant_map"], 256, "nested_quant_map")
    # each block's nested scale by index: repeating the scales `nested` times would allocate what a huge
    # nested_blocksize claims (the fuzzer's 2**32 - 1 took seconds and gigabytes)
    values = code[absmax] * nested_absmax[np.arange(blocks) // nested]
    return values + np.float32(state["nested_offset"])


class Bnb4bit(PackedFormat, name="bnb-4bit"):
    """`load_in_4bit`: `weight` (two 4-bit codes per byte, high nibble first, row-major over the weight's
    `shape`), `weight.absmax` per `blocksize` values, and the quant state as a JSON blob."""

    writable = False
    parts = ("weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
             *(QUANT_STATE + t for t in CODES))
    # the weight's shape is in the quant state's JSON, not in any stored tensor's shape
    layout_parts = tuple(QUANT_STATE + t for t in CODES)

    @classmethod
    def logical_shape_of(
        cls, parts: dict[str, tuple[int, ...]], values: dict[str, np.ndarray], scheme: Scheme
    ) -> tuple[int, int]:
        quant_type = _quant_type(values)
        out, n = parse_quant_state(values[QUANT_STATE + quant_type], quant_type)["shape"]
        return out, n

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        quant_type = _quant_type(tensors)
        state = parse_quant_state(tensors[QUANT_STATE + quant_type], quant_type)
        out, n = state["shape"]
        size, blocksize = out * n, state["blocksize"]
        if "weight.absmax" not in tensors:
            raise InputInvalid("absmax tensor is missing")
        # bitsandbytes views any `bnb_4bit_quant_storage` dtype as its bytes
        packed = np.ascontiguousarray(tensors["weight"]).reshape(-1).view(np.uint8)
        if packed.size != -(-size // 2):
            raise InputInvalid(f"weight holds {packed.size} bytes, expected {-(-size // 2)} for shape {[out, n]}")
        codes = np.empty(packed.size * 2, dtype=np.uint8)
        codes[0::2] = packed >> 4
        codes[1::2] = packed & 0xF
        absmax = _block_scales(tensors, state, -(-size // blocksize))
        values = CODES[quant_type][codes[:size]] * np.repeat(absmax, blocksize)[:size]
        # dequantize_4bit's output dtype, then the model's (the same when bitsandbytes wrote the model)
        return round_to(round_to(values, state["dtype"]), scheme.dtype).reshape(out, n)

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = _bnb_config(config)
        if qc is None or not _load_flags(qc)[0]:
            return None
        quant_type = qc.get("bnb_4bit_quant_type", "fp4")
        if not isinstance(quant_type, str) or quant_type not in CODES:
            raise Unsupported(f"bitsandbytes checkpoint with bnb_4bit_quant_type {quant_type!r} (nf4, fp4)")
        return Scheme(4, 0, model_dtype(config))

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.weight.absmax" in names and f"{module}.weight" in names


class BnbInt8(PackedFormat, name="bnb-int8"):
    """`load_in_8bit` (LLM.int8): `weight` int8 and `SCB`, each row's absmax; `weight_format` 0 is row-major.
    `llm_int8_threshold` picks the activation columns bitsandbytes multiplies in 16 bit at run time; the
    weights are the same int8 values either way."""

    writable = False
    parts = ("weight", "SCB", "weight_format")

    @classmethod
    def logical_shape(cls, parts: dict[str, tuple[int, ...]], scheme: Scheme) -> tuple[int, int]:
        out, n = parts["weight"]
        return out, n

    @classmethod
    def dequantize(cls, tensors: dict[str, np.ndarray], scheme: Scheme) -> np.ndarray:
        weight = np.asarray(tensors["weight"])
        if weight.dtype != np.int8 or weight.ndim != 2:
            raise InputInvalid(f"weight is {weight.dtype} {list(weight.shape)}, expected an int8 matrix")
        if "weight_format" in tensors:
            layout = np.asarray(tensors["weight_format"])
            if layout.size != 1 or layout.dtype.kind not in "iu" or int(layout.reshape(-1)[0]) != 0:
                # col32 / col_turing / col_ampere: GPU tile layouts bitsandbytes only undoes on CUDA
                raise Unsupported(f"LLM.int8 weight_format {layout.reshape(-1).tolist()} is not row-major (0)")
        row_scales = _float_vector(tensors["SCB"], weight.shape[0], "SCB")
        values = weight.astype(np.float32) * row_scales[:, None] * INT8_RECIPROCAL
        return round_to(values, scheme.dtype)

    @classmethod
    def scheme_from_config(cls, config: dict) -> Scheme | None:
        qc = _bnb_config(config)
        if qc is None or not _load_flags(qc)[1]:
            return None
        return Scheme(8, 0, model_dtype(config))

    @classmethod
    def is_quantized(cls, module: str, names: set[str]) -> bool:
        return f"{module}.SCB" in names and f"{module}.weight" in names
