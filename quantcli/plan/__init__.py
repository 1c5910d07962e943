"""The quantization plan: llama-quantize's per-tensor type decisions, before any compute.

from quantcli.plan import ModelInfo, Overrides, TensorSpec, make_plan
plan = make_plan(ModelInfo("llama", n_layer=30, n_head=9, n_head_kv=3), specs, "Q4_K_M", Overrides())
for d in plan.decisions: d.name, d.type, d.reason, d.fell_back, d.fallback_from
"""

from quantcli.plan.core import (
    Overrides,
    Plan,
    TensorDecision,
    TensorSpec,
    gguf_file_size,
    layer_sort_key,
    llama_order,
    make_plan,
    pad,
    tensor_info_bytes,
    tensor_nbytes,
)
from quantcli.plan.ftypes import (
    BITS_RECIPES,
    FTYPES,
    SUPPORTED_FTYPES,
    Ftype,
    ftype_from_bits,
    parse_ftype,
    parse_ggml_type,
    resolve_recipe,
)
from quantcli.plan.rules import Category, ModelInfo, category_of, n_dims, use_more_bits

__all__ = [
    "BITS_RECIPES",
    "FTYPES",
    "SUPPORTED_FTYPES",
    "Category",
    "Ftype",
    "ModelInfo",
    "Overrides",
    "Plan",
    "TensorDecision",
    "TensorSpec",
    "category_of",
    "ftype_from_bits",
    "gguf_file_size",
    "layer_sort_key",
    "llama_order",
    "make_plan",
    "n_dims",
    "pad",
    "parse_ftype",
    "parse_ggml_type",
    "resolve_recipe",
    "tensor_info_bytes",
    "tensor_nbytes",
    "use_more_bits",
]
