"""The tensor-type rules of src/llama-quant.cpp (llama-cpp-python 0.3.36), as data where data fits.

Every function here mirrors one C function; comments name it. Rules return (type, reason) so a plan
can say *why* each tensor got its type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from quantcli.errors import InputInvalid
from quantcli.gguf_constants import GGML_QUANT_SIZES
from quantcli.gguf_constants import GGMLQuantizationType as T


class Category(Enum):  # tensor_category
    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")

# tensor_get_category: (test, needle, category), first match wins.
_CATEGORY_RULES: list[tuple[str, str, Category]] = [
    ("exact", "output.weight", Category.OUTPUT),
    ("exact", "token_embd.weight", Category.TOKEN_EMBD),
    ("exact", "per_layer_token_embd.weight", Category.TOKEN_EMBD),
    ("contains", "attn_qkv.weight", Category.ATTENTION_QKV),
    ("contains", "attn_kv_b.weight", Category.ATTENTION_KV_B),
    ("contains", "attn_v.weight", Category.ATTENTION_V),
    ("contains", "attn_k.weight", Category.ATTENTION_K),
    ("contains", "attn_q.weight", Category.ATTENTION_Q),
    ("contains", "attn_output.weight", Category.ATTENTION_OUTPUT),
    ("contains", "ffn_up", Category.FFN_UP),
    ("contains", "ffn_gate", Category.FFN_GATE),
    ("contains", "ffn_down", Category.FFN_DOWN),
]
ATTN_V_LIKE = frozenset({Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B})


def category_of(name: str) -> Category:
    for test, needle, cat in _CATEGORY_RULES:
        if (name == needle) if test == "exact" else (needle in name):
            return cat
    return Category.OTHER


# tensor_allows_quantization: substrings that keep a tensor's stored type.
NEVER_QUANTIZED_SUBSTRINGS: tuple[str, ...] = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    *(f"time_mix_{n}.weight" for n in (
        "first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2", "decay_w1", "decay_w2",
        "lerp_fused",
    )),
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)  # fmt: skip
NEVER_QUANTIZED_NAMES: tuple[str, ...] = ("position_embd.weight", "token_types.weight")
GLM5_NEXT_NEVER_QUANTIZED: tuple[str, ...] = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)  # fmt: skip


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count (minimum 1)."""
    dims = len(ne)
    while dims > 1 and ne[dims - 1] == 1:
        dims -= 1
    return dims


def quantization_block_reason(
    name: str, ne: tuple[int, ...], arch: str, leave_output_tensor: bool
) -> str | None:
    """None if llama-quantize may change this tensor's type, else why not (tensor_allows_quantization)."""
    if n_dims(ne) < 2:
        return "1-D tensor"
    # C: `name.rfind("weight") == name.size() - 6`; for a 5-character name both sides are npos, so
    # llama-quantize treats it as a weight too.
    if not (name.endswith("weight") or len(name) == 5):
        return "not a weight"
    if leave_output_tensor and name == "output.weight":
        return "output.weight: --leave-output-tensor"
    for needle in NEVER_QUANTIZED_SUBSTRINGS:
        if needle in name:
            return f"'{needle}' is never quantized"
    if name in NEVER_QUANTIZED_NAMES:
        return f"{name} is never quantized"
    if arch == "glm5-next":
        for needle in GLM5_NEXT_NEVER_QUANTIZED:
            if needle in name:
                return f"glm5-next '{needle}' tensors are never quantized"
    return None


def block_size(qtype: T) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def is_quantized_type(qtype: T) -> bool:
    return qtype not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


# tensor_type_fallback: the type tried when ne[0] is not a multiple of the block size.
FALLBACK_TYPES: dict[T, T] = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}  # fmt: skip


class NoFallback(Exception):
    """tensor_type_fallback throws: a 256-block type with no rule."""


def fallback_type(target: T, ncols: int) -> T:
    """The type llama-quantize writes instead of `target` when `ncols % block(target) != 0`."""
    result = FALLBACK_TYPES.get(target)
    if result is None:
        if block_size(target) > 32:
            raise NoFallback(f"no tensor type fallback is defined for type {target.name}")
        result = target
    if ncols % block_size(result):
        result = T.F16  # "must use F16 due to unusual shape"
    return result


# LLM_TYPE_70B as the model loaders set it: arch -> (block_count, requires n_head != n_head_kv).
SEVENTY_B_LAYERS: dict[str, tuple[int, bool]] = {
    "llama": (80, True), "deci": (80, False), "olmo": (80, False), "qwen2": (80, False), "jais2": (68, False),
}  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """The hyper-parameters llama-quantize's rules read (llama_hparams / llm_type)."""

    arch: str
    n_layer: int  # {arch}.block_count (n_layer_all)
    n_head: int = 0  # layer 0
    n_head_kv: int = 0  # layer 0 (defaults to n_head in the loader)
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv

    @property
    def is_70b(self) -> bool:
        rule = SEVENTY_B_LAYERS.get(self.arch)
        if rule is None:
            return False
        layers, needs_gqa = rule
        return self.n_layer == layers and (not needs_gqa or self.n_head != self.n_head_kv)

    @classmethod
    def from_metadata(cls, kv: dict[str, object]) -> ModelInfo:
        arch = str(kv.get("general.architecture", ""))

        def first(key: str, default: int) -> int:
            value = kv.get(f"{arch}.{key}")
            if value is None:
                return default
            try:
                if hasattr(value, "__len__") and not isinstance(value, str):
                    return int(value[0]) if len(value) else default  # per-layer arrays: layer 0 is used
                return int(value)  # type: ignore[call-overload]
            except (TypeError, ValueError):
                raise InputInvalid(f"{arch}.{key} is not an integer: {value!r}") from None

        n_head = first("attention.head_count", 0)
        return cls(
            arch=arch,
            n_layer=first("block_count", 0),
            n_head=n_head,
            n_head_kv=first("attention.head_count_kv", n_head),
            n_expert=first("expert_count", 0),
        )


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    # C integer semantics: `/` truncates toward zero and `%` keeps the dividend's sign.
    eighth = int(n_layers / 8)
    rem = _c_mod(i_layer - eighth, 3)
    return i_layer < eighth or i_layer >= int(7 * n_layers / 8) or rem == 2


def _c_mod(a: int, b: int) -> int:
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _cdiv(a: int, b: int) -> int:
    return int(a / b)


@dataclass
class MixtureState:
    """quantize_state_impl: counters advanced while tensors are visited in llama-quantize's order."""

    model: ModelInfo
    has_imatrix: bool
    has_tied_embeddings: bool
    output_tensor_type: T | None
    token_embedding_type: T | None
    n_attention_wv: int
    n_ffn_down: int = 0
    n_ffn_gate: int = 0
    n_ffn_up: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0
    _layer_re: re.Pattern[str] = field(default=re.compile(r"^blk\.\s*([+-]?\d+)"), repr=False)

    def layer_info(self, counter: int, n_layer: int, name: str) -> tuple[int, int]:
        if max(1, self.model.n_expert) > 1:
            m = self._layer_re.match(name)
            if m is None:
                raise ValueError(f"Failed to determine layer for tensor {name}")
            layer = int(m.group(1))
            if not 0 <= layer < n_layer:
                raise ValueError(f"Bad layer {layer} for tensor {name}. Must be in [0, {n_layer})")
            return layer, n_layer
        return counter, n_layer


VERY_LOW_BIT = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
OUTPUT_Q5_K_FTYPES = frozenset({"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"})
TOKEN_EMBD_BY_FTYPE: dict[str, T] = {
    "IQ2_XXS": T.Q2_K, "IQ2_XS": T.Q2_K, "IQ1_S": T.Q2_K, "IQ1_M": T.Q2_K,
    "IQ2_S": T.IQ3_S, "IQ2_M": T.IQ3_S, "IQ3_XXS": T.IQ3_S,
    "TQ1_0": T.Q4_K, "TQ2_0": T.Q4_K, "Q2_0": T.Q4_K,
}  # fmt: skip
ATTN_OUTPUT_8_EXPERT_Q5_K = frozenset({
    "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS",
})  # fmt: skip
ATTN_OUTPUT_DENSE: dict[str, T] = {
    "Q2_K": T.Q3_K, "IQ3_XXS": T.IQ3_S, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K, "IQ3_M": T.Q4_K,
}  # fmt: skip
QKV_DEAD_BRANCH = "attn_qkv has its own rule in llama-quant.cpp, but the attn_v branch catches it first"


def mixture_type(
    st: MixtureState, new_type: T, name: str, ne: tuple[int, ...], ftype: str, cat: Category
) -> tuple[T, str]:
    """llama_tensor_get_type_impl. `new_type` is the recipe's default type; returns (type, reason)."""
    m = st.model
    arch = m.arch
    falcon = arch == "falcon"

    if arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        if new_type not in (T.F32, T.BF16, T.F16):
            return T.Q8_0, "glm5-next: attn_q_a/attn_q_b/nextn.eh_proj stay at Q8_0 or above"

    if cat == Category.OUTPUT or (st.has_tied_embeddings and cat == Category.TOKEN_EMBD):
        what = "output" if cat == Category.OUTPUT else "token_embd (tied to output)"
        if st.output_tensor_type is not None:
            return st.output_tensor_type, f"{what}: --output-tensor-type"
        if ftype == "MXFP4_MOE":
            return T.Q8_0, f"{what}: MXFP4_MOE keeps output at Q8_0"
        if falcon:
            return T.Q8_0, f"{what}: falcon output -> Q8_0"
        if ne[0] % block_size(new_type):
            return T.Q8_0, f"{what}: row {ne[0]} not a multiple of {block_size(new_type)} -> Q8_0"
        if ftype in OUTPUT_Q5_K_FTYPES:
            return T.Q5_K, f"{what}: very-low-bit recipe -> Q5_K"
        if new_type != T.Q8_0:
            return T.Q6_K, f"{what}: -> Q6_K"
        return new_type, f"{what}: Q8_0 recipe keeps Q8_0"

    if ftype == "MXFP4_MOE":
        is_bailing_expert = arch == "bailingmoe3" and cat in (
            Category.FFN_UP,
            Category.FFN_GATE,
            Category.FFN_DOWN,
        )
        if len(ne) > 2 and ne[2] > 1 and (arch != "bailingmoe3" or is_bailing_expert):
            return T.MXFP4, "MXFP4_MOE: expert tensor -> MXFP4"
        return T.Q8_0, "MXFP4_MOE: non-expert tensor -> Q8_0"

    if cat == Category.TOKEN_EMBD:
        if st.token_embedding_type is not None:
            return st.token_embedding_type, "token_embd: --token-embedding-type"
        if ftype in TOKEN_EMBD_BY_FTYPE:
            return TOKEN_EMBD_BY_FTYPE[ftype], f"token_embd: {ftype} recipe"
        return new_type, "token_embd: recipe default"

    if ftype in VERY_LOW_BIT:
        iq2sm = ftype in ("IQ2_S", "IQ2_M")
        if cat in ATTN_V_LIKE:
            if m.n_gqa >= 4 or m.n_expert >= 4:
                t, why = T.Q4_K, "gqa>=4 or experts>=4"
            else:
                t, why = (T.IQ3_S if iq2sm else T.Q2_K), "very-low-bit recipe"
            st.i_attention_wv += 1
            return t, f"{cat.value}: {why}"
        if m.n_expert == 8 and cat == Category.ATTENTION_K:
            return T.Q4_K, "attn_k: 8 experts"
        if cat == Category.FFN_DOWN:
            i = st.i_ffn_down
            st.i_ffn_down += 1
            if i < _cdiv(st.n_ffn_down, 8):
                return (T.IQ3_S if iq2sm else T.Q2_K), f"ffn_down: layer {i} < n/8"
            return new_type, "ffn_down: recipe default"
        if cat == Category.ATTENTION_OUTPUT:
            if m.n_expert == 8:
                return T.Q5_K, "attn_output: 8 experts"
            if ftype in ("IQ1_S", "IQ1_M"):
                return T.IQ2_XXS, "attn_output: IQ1 recipe"
            if iq2sm:
                return T.IQ3_S, "attn_output: IQ2_S/M recipe"
        return new_type, "recipe default"

    if cat in ATTN_V_LIKE:
        t, why = _attn_v_type(st, new_type, ftype)
        if m.is_70b and t in (T.Q3_K, T.Q4_K):
            t, why = T.Q5_K, why + "; 70B -> Q5_K"
        if m.n_expert == 8:
            t, why = T.Q8_0, "8 experts -> Q8_0"
        st.i_attention_wv += 1
        if cat == Category.ATTENTION_QKV:
            why += f" ({QKV_DEAD_BRANCH})"
        return t, f"{cat.value}: {why}"

    if cat == Category.ATTENTION_K and m.n_expert == 8:
        return T.Q8_0, "attn_k: 8 experts -> Q8_0"
    if cat in (Category.ATTENTION_K, Category.ATTENTION_Q):
        # llama-quantize's attn_k and attn_q branches: the same two IQ3 recipe rules.
        if ftype == "IQ3_XS":
            return T.IQ3_XXS, f"{cat.value}: IQ3_XS recipe"
        if ftype == "IQ3_XXS":
            return T.IQ2_S, f"{cat.value}: IQ3_XXS recipe"
        return new_type, "recipe default"

    if cat == Category.FFN_DOWN:
        i_layer, n_layer = st.layer_info(st.i_ffn_down, st.n_ffn_down, name)
        t, why = _ffn_down_type(st, new_type, ftype, i_layer, n_layer, falcon)
        st.i_ffn_down += 1
        return t, f"ffn_down: {why}"

    if cat == Category.ATTENTION_OUTPUT:
        if not falcon:
            if m.n_expert == 8:
                if ftype in ATTN_OUTPUT_8_EXPERT_Q5_K:
                    return T.Q5_K, "attn_output: 8 experts -> Q5_K"
            elif ftype in ATTN_OUTPUT_DENSE:
                return ATTN_OUTPUT_DENSE[ftype], f"attn_output: {ftype} recipe"
        elif ftype == "Q3_K_L":
            return T.Q4_K, "attn_output: falcon Q3_K_L"
        return new_type, "recipe default"

    # (The ATTENTION_QKV branch that follows in the C source is unreachable: caught by ATTN_V_LIKE above.)

    if cat in (Category.FFN_GATE, Category.FFN_UP):
        counter = "i_ffn_gate" if cat == Category.FFN_GATE else "i_ffn_up"
        n_total = st.n_ffn_gate if cat == Category.FFN_GATE else st.n_ffn_up
        i_layer, n_layer = st.layer_info(getattr(st, counter), n_total, name)
        setattr(st, counter, getattr(st, counter) + 1)
        if ftype == "IQ3_XS" and _cdiv(n_layer, 8) <= i_layer < _cdiv(7 * n_layer, 8):
            return T.IQ3_XXS, f"{cat.value}: IQ3_XS middle layer {i_layer}"
        return new_type, "recipe default"

    return new_type, "recipe default"


def _attn_v_type(st: MixtureState, new_type: T, ftype: str) -> tuple[T, str]:
    gqa = st.model.n_gqa
    i, n = st.i_attention_wv, st.n_attention_wv
    if ftype == "Q2_K":
        return (T.Q4_K, "Q2_K gqa>=4") if gqa >= 4 else (T.Q3_K, "Q2_K gqa<4")
    if ftype == "Q2_K_S" and gqa >= 4:
        return T.Q4_K, "Q2_K_S gqa>=4"
    if ftype == "IQ3_XXS":
        if gqa >= 4:
            return T.Q4_K, "IQ3_XXS gqa>=4"
        return (
            (T.IQ3_S, "IQ3_XXS without imatrix")
            if not st.has_imatrix
            else (T.IQ3_XXS, "IQ3_XXS with imatrix")
        )
    if ftype in ("IQ3_XS", "IQ3_S") and gqa >= 4:
        return T.Q4_K, f"{ftype} gqa>=4"
    if ftype == "IQ3_M":
        return T.Q4_K, "IQ3_M"
    if ftype == "Q3_K_M":
        return (T.Q5_K, f"Q3_K_M first two (#{i})") if i < 2 else (T.Q4_K, f"Q3_K_M #{i} >= 2")
    if ftype == "Q3_K_L":
        return T.Q5_K, "Q3_K_L"
    if ftype in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
        return T.Q5_K, f"{ftype} gqa>=4"
    if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        return T.Q6_K, f"use_more_bits #{i} of {n}"
    if ftype == "Q4_K_S" and i < 4:
        return T.Q5_K, f"Q4_K_S first four (#{i})"
    return new_type, "recipe default" + (f" (#{i} of {n})" if ftype in ("Q4_K_M", "Q5_K_M") else "")


def _ffn_down_type(st: MixtureState, new_type: T, ftype: str, i: int, n: int, falcon: bool) -> tuple[T, str]:
    eighth, sixteenth = _cdiv(n, 8), _cdiv(n, 16)
    if ftype == "Q2_K":
        return T.Q3_K, "Q2_K"
    if ftype == "Q2_K_S":
        return (T.Q4_K, f"Q2_K_S layer {i} < n/8") if i < eighth else (new_type, f"Q2_K_S layer {i}")
    if ftype == "IQ3_XXS" and not st.has_imatrix:
        return (
            (T.Q4_K, f"layer {i} < n/8 without imatrix")
            if i < eighth
            else (T.Q3_K, "IQ3_XXS without imatrix")
        )
    if ftype == "Q3_K_M":
        if i < sixteenth:
            return T.Q5_K, f"Q3_K_M layer {i} < n/16"
        if not falcon or use_more_bits(i, n):
            return T.Q4_K, f"Q3_K_M layer {i}"
        return T.Q3_K, f"Q3_K_M falcon layer {i}"
    if ftype == "IQ3_M" and (i < eighth or (st.model.n_expert == 8 and use_more_bits(i, n))):
        return T.Q4_K, f"IQ3_M layer {i}"
    if ftype == "Q3_K_L":
        return (T.Q4_K, "Q3_K_L falcon") if falcon else (T.Q5_K, "Q3_K_L")
    if ftype == "Q4_K_M":
        if falcon:
            if i < sixteenth:
                return T.Q6_K, f"falcon layer {i} < n/16"
            if use_more_bits(i, n):
                return T.Q5_K, f"falcon use_more_bits layer {i}"
            return T.Q4_K, f"falcon layer {i}"
        if use_more_bits(i, n):
            return T.Q6_K, f"use_more_bits layer {i} of {n}"
        return new_type, f"recipe default (layer {i} of {n})"
    if i < eighth and ftype in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
        return T.Q5_K, f"layer {i} < n/8 without imatrix"
    if ftype == "Q5_K_M":
        if use_more_bits(i, n):
            return T.Q6_K, f"use_more_bits layer {i} of {n}"
        return new_type, f"recipe default (layer {i} of {n})"
    if ftype == "Q4_K_S" and not falcon and i < eighth:
        return T.Q5_K, f"Q4_K_S layer {i} < n/8"
    if ftype in ("Q4_0", "Q5_0") and st.has_imatrix and i < eighth:
        return (T.Q4_1 if ftype == "Q4_0" else T.Q5_1), f"{ftype} with imatrix, layer {i} < n/8"
    return new_type, "recipe default"
