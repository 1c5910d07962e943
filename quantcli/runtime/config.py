"""Model description for the runtime: GGUF hparams plus the per-architecture traits.

Hyper-parameters come from the GGUF metadata keys (`{arch}.block_count`, ...). Structural options that
tensor names already tell (biases, q/k norms, post-norms, fused QKV, tied output) are read from the tensor
list by the model. What neither says — rope style, activation, embedding scale, sliding-window pattern —
are the architecture traits, taken from `quantcli.arch` (`runtime_traits(arch)`), see `arch_traits`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantcli.arch import get_arch, supported_architectures
from quantcli.errors import InputInvalid, Unsupported


@dataclass(frozen=True)
class ArchTraits:
    """What llama.cpp's graph for an architecture hard-codes (src/models/<arch>.cpp, llama_model_rope_type)."""

    rope_neox: bool  # NEOX pairs (i, i+n/2) vs NORM interleaved pairs (2i, 2i+1)
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    embed_scale_sqrt_n_embd: bool = False  # gemma: token embeddings times sqrt(n_embd)
    swa_pattern_default: int = 0  # gemma2/gemma3: every 2nd/6th layer global when the file has no pattern key
    swa_rope_base_is_main: bool = False  # gemma2: sliding layers use the main rope base without the swa key
    attn_scale_n_embd_layers: int = 0  # gemma2/3 27B (46/62 layers): 1/sqrt(n_embd/n_head), else head_dim
    no_rope_layer_step: int = 0  # smollm3: layer il skips rope when (il + 1) % step == 0
    pre_norms: bool = True  # attn_norm/ffn_norm before each branch (olmo2: none, only post-norms)
    expert_weights_norm: bool = False  # MoE: renormalise the top-k expert weights (build_moe_ffn's norm_w)
    yarn_rope: bool = False  # YaRN rope scaling computed (gpt-oss); elsewhere a YaRN factor is refused
    swa_rope_scale_is_main: bool = False  # sliding layers use the main rope freq scale (gpt-oss), else 1
    ffn_norm: str = "ffn_norm"  # the FFN input norm tensor (gpt-oss: post_attention_norm)
    expert_gating: str = "softmax"  # "softmax_weight": top-k of the raw router logits, softmax over them
    expert_glu: str = "swiglu"  # "swiglu_oai": ggml_swiglu_oai (clamped, alpha 1.702, (up + 1))


def arch_traits(arch: str) -> ArchTraits:
    """Traits for a GGUF architecture name, from the quantcli/arch table whose gguf_arch matches."""
    tables = _arch_tables_traits()
    if arch in tables:
        return tables[arch]
    supported = ", ".join(sorted(tables))
    raise Unsupported(f"the runtime does not support architecture {arch!r} (supported: {supported})")


@functools.cache
def _arch_tables_traits() -> dict[str, ArchTraits]:
    out: dict[str, ArchTraits] = {}
    for hf_name in supported_architectures():
        spec = get_arch({"architectures": [hf_name]})
        rt = spec.runtime
        if rt.norm != "rms":
            continue  # not a graph this runtime implements
        out.setdefault(
            spec.gguf_arch,
            ArchTraits(
                rope_neox=rt.rope_style == "neox",
                activation="gelu" if rt.activation.startswith("gelu") else "silu",
                embed_scale_sqrt_n_embd=rt.embedding_scale == "sqrt_hidden",
                swa_pattern_default=int(rt.sliding_window_pattern or 0),
                swa_rope_base_is_main=rt.swa_rope_base_is_main,
                attn_scale_n_embd_layers=rt.attn_scale_n_embd_layers,
                no_rope_layer_step=rt.no_rope_layer_step,
                pre_norms=rt.pre_norms,
                expert_weights_norm=rt.expert_weights_norm,
                yarn_rope=rt.yarn_rope,
                swa_rope_scale_is_main=rt.swa_rope_scale_is_main,
                ffn_norm=rt.ffn_norm,
                expert_gating=rt.expert_gating,
                expert_glu=rt.expert_glu,
            ),
        )
    return out


@dataclass
class ModelConfig:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    norm_eps: float
    rope_base: float
    rope_dim: int
    rope_freq_scale: float
    rope_attn_factor: float  # ggml_rope_ext's attn_factor: cos and sin are multiplied by it
    rope_ctx_orig: int  # n_ctx_orig_yarn: above it (padded context) Phi-3 uses rope_factors_long
    rope_base_swa: float
    rope_ext_factor: float  # YaRN's ext_factor (llama_context: 1 under YaRN, else 0); corr dims from beta 32 / 1
    sliding_window: int
    swa_layers: list[bool] = field(default_factory=list)
    attn_scale: float = 1.0
    final_logit_softcap: float = 0.0
    attn_logit_softcap: float = 0.0
    # granite: embeddings times embedding_scale, each branch output times residual_scale, logits divided
    # by logit_scale (0 = absent: no scaling, as llama.cpp's zero defaults)
    embedding_scale: float = 0.0
    residual_scale: float = 0.0
    logit_scale: float = 0.0
    n_expert: int = 0  # mixture of experts: experts per layer and how many each token uses
    n_expert_used: int = 0
    traits: ArchTraits = field(default_factory=lambda: ArchTraits(rope_neox=False))

    @classmethod
    def from_metadata(
        cls, md: dict[str, Any], n_vocab_tensor: int, n_layer_tensors: int | None = None
    ) -> ModelConfig:
        """`n_layer_tensors`: how many `blk.N` layers the file holds (block_count must not exceed it)."""
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise InputInvalid("model has no general.architecture")
        traits = arch_traits(arch)

        def key(name: str, default: Any = None, required: bool = False) -> Any:
            value = md.get(f"{arch}.{name}", default)
            if value is None and required:
                raise InputInvalid(f"model metadata lacks {arch}.{name}")
            if isinstance(value, (bool, str, bytes)) and name not in _STRING_KEYS:
                raise InputInvalid(f"{arch}.{name} is {value!r}, expected a number")
            return value

        def positive(name: str, value: Any) -> int:
            n = _per_layer_scalar(value, f"{arch}.{name}")
            if n <= 0:
                raise InputInvalid(f"{arch}.{name} is {n}, expected a positive integer")
            return n

        n_layer = positive("block_count", key("block_count", required=True))
        if n_layer_tensors is not None and n_layer > n_layer_tensors:
            raise InputInvalid(
                f"{arch}.block_count is {n_layer}, but the file has tensors for {n_layer_tensors} layers"
            )
        n_embd = positive("embedding_length", key("embedding_length", required=True))
        n_head = positive("attention.head_count", key("attention.head_count", required=True))
        n_head_kv = positive("attention.head_count_kv", key("attention.head_count_kv", n_head))
        if n_head % n_head_kv:
            raise InputInvalid(
                f"{arch}.attention.head_count {n_head} is not a multiple of attention.head_count_kv {n_head_kv}"
            )
        head_dim_k = positive("attention.key_length", key("attention.key_length", n_embd // n_head or 1))
        head_dim_v = positive("attention.value_length", key("attention.value_length", head_dim_k))
        # llama_model::load_hparams: an absent type is "linear"; an absent or zero factor means 1.
        scaling = key("rope.scaling.type", "linear")
        factor = float(key("rope.scaling.factor", 0.0) or 1.0)
        if (scaling == "yarn" and factor != 1.0 and not traits.yarn_rope) or scaling not in ("none", "linear", "yarn"):
            # YaRN's ramp and magnitude correction are not implemented. A "longrope" type key comes from
            # TextModel archs, where llama.cpp has no factor tensors and so ignores the model's scaling;
            # Phi-3's converter writes no type key and runs as "linear" with rope_factors_long/short.
            raise Unsupported(f"rope scaling {scaling!r} is not implemented in the runtime")
        # YaRN at factor 1 rotates by the unscaled angle (up to one float32 rounding in its ramp dims).
        # The model rounds 1/factor to float32: the same value as ggml's 1.0f/factor.
        freq_scale = 1.0 if scaling == "none" else 1.0 / factor
        yarn = scaling == "yarn" and traits.yarn_rope
        n_ctx_orig = int(key("rope.scaling.original_context_length", key("context_length", 0)) or 0)
        # llama_context: ext_factor 1 under YaRN; yarn_attn_factor = get_mscale(factor) / (1 + 0.1 ln factor),
        # times rope.scaling.attn_factor (ggml's rope_yarn multiplies 1 + 0.1 ln(1/freq_scale) back in)
        attn_factor = float(key("rope.scaling.attn_factor", 1.0))
        if yarn:
            f = np.float32(1.0) / np.float32(freq_scale)
            mscale = np.float32(0.1) * np.log(f) + np.float32(1.0) if f > 1 else np.float32(1.0)
            cancel = np.float32(1.0) / (np.float32(1.0) + np.float32(0.1) * np.log(f))
            attn_factor = float(np.float32(mscale * cancel) * np.float32(attn_factor))
        sliding_window = int(key("attention.sliding_window", 0) or 0)
        swa_layers = [False] * n_layer
        if sliding_window > 0 and traits.swa_pattern_default:
            pattern = key("attention.sliding_window_pattern", traits.swa_pattern_default)
            if isinstance(pattern, list):
                swa_layers = [bool(v) for v in pattern]
            else:
                n_pattern = int(pattern)
                swa_layers = [n_pattern == 0 or (il % n_pattern) < n_pattern - 1 for il in range(n_layer)]
        else:
            # llama/qwen2/qwen3/granite/smollm3 graphs never read the key; phi3 reads it but disables SWA
            # (src/models/phi3.cpp); olmo2 uses it only when a window key is written (OLMo 3)
            sliding_window = 0
        attn_scale_key = float(key("attention.scale", 0.0) or 0.0)  # granite's attention multiplier
        if attn_scale_key:
            attn_scale = attn_scale_key
        elif traits.attn_scale_n_embd_layers and n_layer == traits.attn_scale_n_embd_layers:
            attn_scale = 1.0 / math.sqrt(float(n_embd // n_head))
        else:
            attn_scale = 1.0 / math.sqrt(float(head_dim_k))
        rope_base = float(key("rope.freq_base", 10000.0))
        ff = key("feed_forward_length", required=True)
        return cls(
            arch=arch,
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=positive("feed_forward_length", ff),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=head_dim_k,
            head_dim_v=head_dim_v,
            n_vocab=n_vocab_tensor,
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=rope_base,
            rope_dim=_rope_dim(arch, key("rope.dimension_count", head_dim_k), head_dim_k),
            rope_freq_scale=freq_scale,
            # llama_context: cparams.yarn_attn_factor (1 without YaRN) times rope.scaling.attn_factor
            rope_attn_factor=float(attn_factor),
            rope_ctx_orig=n_ctx_orig,
            rope_ext_factor=1.0 if yarn else 0.0,
            rope_base_swa=float(key("rope.freq_base_swa", rope_base if traits.swa_rope_base_is_main else 10000.0)),
            sliding_window=sliding_window,
            swa_layers=swa_layers,
            attn_scale=attn_scale,
            final_logit_softcap=float(key("final_logit_softcapping", 0.0) or 0.0),
            attn_logit_softcap=float(key("attn_logit_softcapping", 0.0) or 0.0),
            embedding_scale=float(key("embedding_scale", 0.0) or 0.0),
            residual_scale=float(key("residual_scale", 0.0) or 0.0),
            logit_scale=float(key("logit_scale", 0.0) or 0.0),
            n_expert=_per_layer_scalar(key("expert_count", 0), f"{arch}.expert_count"),
            n_expert_used=_per_layer_scalar(key("expert_used_count", 0), f"{arch}.expert_used_count"),
            traits=traits,
        )


_STRING_KEYS = ("rope.scaling.type",)


def _rope_dim(arch: str, value: Any, head_dim: int) -> int:
    n = _per_layer_scalar(value, f"{arch}.rope.dimension_count")
    if n <= 0 or n % 2 or n > head_dim:
        raise InputInvalid(
            f"{arch}.rope.dimension_count is {n}, expected an even number <= head size {head_dim}"
        )
    return n


def _per_layer_scalar(value: Any, what: str) -> int:
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise Unsupported(f"per-layer {what} values are not supported by the runtime")
        value = value[0]
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float)):
        raise InputInvalid(f"{what} is {value!r}, expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise InputInvalid(f"{what} is {value!r}, expected an integer")
    return int(value)
