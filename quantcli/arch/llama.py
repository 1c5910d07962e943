"""Llama and Mistral (LlamaForCausalLM, MistralForCausalLM) -> GGUF "llama" (conversion/llama.py LlamaModel)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from quantcli.arch.base import (
    ATTENTION_TENSORS,
    MLP_TENSORS,
    MODEL_TENSORS,
    ArchSpec,
    Config,
    HParam,
    RuntimeTraits,
    TensorTransform,
    TransformContext,
    full_rope,
    register,
    text_model_hparams,
)
from quantcli.errors import InputInvalid

# Shared by every llama-like family (qwen2/qwen3 add to it).
DECODER_TENSORS: tuple[tuple[str, str], ...] = (
    *MODEL_TENSORS,
    *ATTENTION_TENSORS,
    ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.ffn_norm"),
    *MLP_TENSORS,
)


def derive_head_dim(cfg: Config) -> None:
    # LlamaConfig/MistralConfig: head_dim defaults to hidden_size // num_attention_heads.
    if cfg.get("head_dim") is None and cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]


def permute_rope_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> ggml's interleaved pairs, per head (LlamaModel.permute)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _rope_rows_fit(n_head_key: str) -> Callable[[tuple[int, ...], TransformContext], tuple[int, ...]]:
    """Plan-time check for the permutations below: the rows must split into heads of an even size."""

    def check(shape: tuple[int, ...], ctx: TransformContext) -> tuple[int, ...]:
        n_head = ctx.config.get(n_head_key) or ctx.config["num_attention_heads"]
        if shape[0] % (2 * n_head):
            raise InputInvalid(
                f"{ctx.hf_name}: {shape[0]} rows do not split into {n_head} heads of an even size "
                f"(config.json {n_head_key} is {n_head})"
            )
        return shape

    return check


def _permute_q(x: np.ndarray, ctx: TransformContext) -> np.ndarray:
    return permute_rope_rows(x, ctx.config["num_attention_heads"])


def _permute_k(x: np.ndarray, ctx: TransformContext) -> np.ndarray:
    n_head = ctx.config["num_attention_heads"]
    n_kv = ctx.config.get("num_key_value_heads") or n_head
    return permute_rope_rows(x, n_kv)


def llama3_rope_freqs(cfg: Config) -> list[tuple[str, np.ndarray]]:
    """`rope_freqs.weight` for rope_type "llama3" (LlamaModel.generate_extra_tensors), in float32.

    Same float32 operations as the converter's torch code, including torch's `scalar / tensor` =
    `scalar * (1 / tensor)`. The converter's `base ** x` uses torch's vectorised powf, which can differ
    from libm's powf by one ulp for a few (head_dim, base) pairs; for the Llama 3.1/3.2/3.3 settings the
    values are identical (tests/test_convert_arch.py checks them against torch).
    """
    rope = full_rope(cfg)
    if str(rope.get("rope_type", "")).lower() != "llama3":
        return []
    f32 = np.float32
    base = rope.get("rope_theta", 10000.0)
    dim = (
        cfg["head_dim"]
        if cfg.get("head_dim") is not None
        else cfg["hidden_size"] // cfg["num_attention_heads"]
    )
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    freqs = f32(1) * (f32(1) / (f32(base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim))))
    wavelen = f32(2 * math.pi) * (f32(1) / freqs)
    smooth = (f32(old_context_len) * (f32(1) / wavelen) - f32(low_freq_factor)) / f32(
        high_freq_factor - low_freq_factor
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = f32(1) * (f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    factors = np.where(
        wavelen < f32(high_freq_wavelen), f32(1), np.where(wavelen > f32(low_freq_wavelen), f32(factor), mid)
    )
    return [("rope_freqs.weight", factors.astype(np.float32))]


def _rope_dim(cfg: Config) -> int:
    return (
        cfg["head_dim"]
        if cfg.get("head_dim") is not None
        else cfg["hidden_size"] // cfg["num_attention_heads"]
    )


# transformers LlamaConfig defaults for keys a config.json may omit.
LLAMA_DEFAULTS: Config = {
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

LLAMA = register(
    ArchSpec(
        hf_architectures=("LlamaForCausalLM",),
        gguf_arch="llama",
        tensor_names=DECODER_TENSORS,
        hparams=(
            *text_model_hparams(),
            HParam("add_vocab_size", lambda cfg: cfg["vocab_size"]),
            HParam("add_rope_dimension_count", _rope_dim),
        ),
        config_defaults=LLAMA_DEFAULTS,
        derive_config=derive_head_dim,
        transforms=(
            TensorTransform(r"q_proj\.(weight|bias)$", _permute_q, _rope_rows_fit("num_attention_heads"),
                            reorders_only=True),
            TensorTransform(r"k_proj\.(weight|bias)$", _permute_k, _rope_rows_fit("num_key_value_heads"),
                            reorders_only=True),
        ),
        # llama.cpp's llama graph renormalises the top-k expert weights (Mixtral, src/models/llama.cpp)
        runtime=RuntimeTraits(rope_style="normal", activation="silu", expert_weights_norm=True),
        extra_tensors=llama3_rope_freqs,
    )
)

# Same converter class (LlamaModel); only MistralConfig's defaults differ.
MISTRAL = register(
    replace(
        LLAMA,
        hf_architectures=("MistralForCausalLM",),
        config_defaults={**LLAMA_DEFAULTS, "max_position_embeddings": 131072, "sliding_window": 4096},
    )
)

# SmolLM3Model is LlamaModel under another GGUF name. llama.cpp hard-codes its no-rope layers (every 4th,
# as SmolLM3Config's default no_rope_layer_interval): the converter writes no key for them.
SMOLLM3 = register(
    replace(
        LLAMA,
        hf_architectures=("SmolLM3ForCausalLM",),
        gguf_arch="smollm3",
        # transformers SmolLM3Config defaults; it has no head_dim (so no key/value length keys).
        config_defaults={
            **LLAMA_DEFAULTS,
            "max_position_embeddings": 32768,
            "rope_theta": 2_000_000.0,
            "num_key_value_heads": 4,
            "tie_word_embeddings": True,
        },
        derive_config=None,
        runtime=RuntimeTraits(
            rope_style="normal", activation="silu", no_rope_layer_step=4, tied_embeddings_default=True
        ),
    )
)
