"""convert_hf_to_gguf.py's decisions: which file type `--outtype` means, and each tensor's type under it.

Pure functions of tensor names, shapes and checkpoint dtypes; `quantcli.sources.hf` applies them while it
lists a checkpoint's tensors, and `converter_plan` states them as a `Plan` (for --dry-run and --strict).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantcli.errors import UsageError
from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from quantcli.plan.core import Overrides, Plan, TensorDecision, TensorSpec
from quantcli.plan.ftypes import FTYPES
from quantcli.plan.rules import ModelInfo

# `--type` values that mean the converter's own output ("auto": the converter's guess from the checkpoint).
OUT_TYPES: dict[str, LlamaFileType | None] = {
    "auto": None,
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}

FTYPE_TENSOR_TYPE: dict[LlamaFileType, GGMLQuantizationType] = {
    LlamaFileType.ALL_F32: GGMLQuantizationType.F32,
    LlamaFileType.MOSTLY_F16: GGMLQuantizationType.F16,
    LlamaFileType.MOSTLY_BF16: GGMLQuantizationType.BF16,
    LlamaFileType.MOSTLY_Q8_0: GGMLQuantizationType.Q8_0,
}

# What gguf.GGUFWriter's file-name convention calls each file type (also our default output suffix).
FTYPE_LABEL: dict[LlamaFileType, str] = {
    LlamaFileType.ALL_F32: "F32",
    LlamaFileType.MOSTLY_F16: "F16",
    LlamaFileType.MOSTLY_BF16: "BF16",
    LlamaFileType.MOSTLY_Q8_0: "Q8_0",
}

# convert_hf_to_gguf.py keeps these GGUF tensors in F32 whatever --outtype says (the subset of its list
# that exists in the architectures we support, plus the generic rules in `choose_tensor_type`).
ALWAYS_F32 = ("ffn_gate_inp", "ffn_gate_inp_shexp", "position_embd", "token_types")

_DTYPE_TYPES = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16, "BF16": GGMLQuantizationType.BF16}


def choose_tensor_type(name: str, shape: Sequence[int], ftype: LlamaFileType) -> GGMLQuantizationType:
    """convert_hf_to_gguf.py's per-tensor rule (ModelBase.prepare_tensors), for the supported ftypes.

    1-D tensors and `*_norm.weight` -> F32; biases and other non-`.weight` tensors -> F32; router /
    position / token-type embeddings -> F32; everything else (token_embd and output included) -> the
    ftype's type. Q8_0 of a row length that is not a multiple of 32 falls back to F16 (gguf.QuantError).
    `shape` is in NumPy order (row length last).
    """
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    base = name.rsplit(".", 1)[0].split(".")[-1]
    if base in ALWAYS_F32 or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    qtype = FTYPE_TENSOR_TYPE[ftype]
    if shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        return GGMLQuantizationType.F16
    return qtype


def parse_out_type(out_type: str) -> LlamaFileType | None:
    """A converter `--type` name -> its file type (None for "auto")."""
    key = out_type.lower()
    if key not in OUT_TYPES:
        raise UsageError(f"--type {out_type!r} is not one of {', '.join(OUT_TYPES)}")
    return OUT_TYPES[key]


def guess_ftype(matrix_dtypes: Iterable[str]) -> LlamaFileType:
    """--type auto: the converter's heuristic on the first tensor with >= 2 dims (BF16 stays BF16).
    `matrix_dtypes`: the safetensors dtypes of the checkpoint's matrices, in checkpoint order."""
    for dtype in matrix_dtypes:
        if dtype == "BF16":
            return LlamaFileType.MOSTLY_BF16
        if dtype == "F16":
            return LlamaFileType.MOSTLY_F16
        break
    return LlamaFileType.MOSTLY_F16  # F32 checkpoints: the converter writes F16 (documented)


def lossless_ftype(matrix_dtypes: Iterable[str]) -> LlamaFileType:
    """The converter --outtype that stores the checkpoint's weights without rounding: bf16 when every
    weight matrix is BF16, f16 when every one is F16, else f32 (F32 or mixed checkpoints)."""
    dtypes = set(matrix_dtypes)
    if dtypes == {"BF16"}:
        return LlamaFileType.MOSTLY_BF16
    if dtypes == {"F16"}:
        return LlamaFileType.MOSTLY_F16
    return LlamaFileType.ALL_F32


def fell_back(qtype: GGMLQuantizationType, ftype: LlamaFileType) -> bool:
    """The converter's only fallback: a Q8_0 matrix whose rows are not a multiple of 32 is written F16."""
    return ftype == LlamaFileType.MOSTLY_Q8_0 and qtype == GGMLQuantizationType.F16


@dataclass(frozen=True)
class ConverterTensor(TensorSpec):
    """One tensor as the converter writes it: GGUF name, ne (fastest dimension first), type, source dtype."""

    source_dtype: str


def converter_plan(tensors: Sequence[ConverterTensor], ftype: LlamaFileType, model: ModelInfo) -> Plan:
    """The converter's per-tensor decisions as a Plan (for --dry-run, --strict and the --json result)."""
    label = FTYPE_LABEL[ftype]
    decisions = []
    for t in tensors:
        src = _DTYPE_TYPES.get(t.source_dtype, GGMLQuantizationType.F32)
        fallback = fell_back(t.type, ftype)
        if fallback:
            reason = f"converter --outtype {label.lower()}: row {t.ne[0]} not a multiple of 32"
        elif t.type == FTYPE_TENSOR_TYPE[ftype]:
            reason = f"converter --outtype {label.lower()}"
        else:
            reason = "converter: kept F32 (1-D, norm, bias or always-F32 tensor)"
        decisions.append(
            TensorDecision(
                t.name, t.ne, src, t.type, reason, fallback, GGMLQuantizationType.Q8_0 if fallback else None
            )
        )
    return Plan(recipe=FTYPES[label], model=model, decisions=decisions, overrides=Overrides())
