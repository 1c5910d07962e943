"""Gemma 3 text (Gemma3ForCausalLM) -> GGUF "gemma3" (conversion/gemma.py Gemma3Model).

HF stores RMSNorm weights as w-1 (Gemma3RMSNorm computes x*(1+w)): +1 on every `*norm.weight`.
The embedding is truncated to the tokenizer's real vocabulary. Gemma3Model (unlike Gemma/Gemma2) does not
drop `lm_head.weight`: a checkpoint that stores one gets an `output.weight` (usually it is tied and absent).
"""

from __future__ import annotations

import json

import numpy as np

from quantcli.arch.base import (
    ATTENTION_TENSORS,
    MLP_TENSORS,
    MODEL_TENSORS,
    QK_NORM_TENSORS,
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


def plus_one(x: np.ndarray, ctx: TransformContext) -> np.ndarray:
    # In the array's own dtype (f32 for BF16/F32 sources, f16 for F16 sources), like torch's `+ 1`.
    return x + x.dtype.type(1)


def real_vocab_size(ctx: TransformContext, rows: int) -> int:
    directory = ctx.directory
    if (directory / "tokenizer.model").is_file():
        return ctx.config.get("vocab_size") or rows
    path = directory / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        return len(tok["model"]["vocab"]) + len(tok["added_tokens"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputInvalid(f"{path}: cannot count the vocabulary to trim the embedding ({exc})") from None


def _truncate_embedding(x: np.ndarray, ctx: TransformContext) -> np.ndarray:
    return x[: real_vocab_size(ctx, x.shape[0])]


def _sliding_window(cfg: Config) -> int | None:
    return cfg["sliding_window"] if cfg.get("sliding_window_pattern") != 1 else None


GEMMA3 = register(
    ArchSpec(
        hf_architectures=("Gemma3ForCausalLM",),
        gguf_arch="gemma3",
        tensor_names=(
            *MODEL_TENSORS,
            *ATTENTION_TENSORS,
            *QK_NORM_TENSORS,
            ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.post_attention_norm"),
            ("model.layers.{bid}.pre_feedforward_layernorm", "blk.{bid}.ffn_norm"),
            ("model.layers.{bid}.post_feedforward_layernorm", "blk.{bid}.post_ffw_norm"),
            *MLP_TENSORS,
        ),
        hparams=(
            *text_model_hparams(),
            # Gemma3Model.set_gguf_parameters re-adds these after TextModel's (same key = overwritten in place).
            HParam("add_context_length", lambda cfg: cfg.get("max_position_embeddings", 131072)),
            HParam("add_head_count", lambda cfg: cfg.get("num_attention_heads", 8)),
            HParam("add_layer_norm_rms_eps", lambda cfg: cfg.get("rms_norm_eps", 1e-6)),
            HParam("add_key_length", lambda cfg: cfg.get("head_dim", 256)),
            HParam("add_value_length", lambda cfg: cfg.get("head_dim", 256)),
            HParam("add_rope_freq_base", lambda cfg: full_rope(cfg).get("rope_theta", 1_000_000.0)),
            HParam("add_final_logit_softcapping", lambda cfg: cfg.get("final_logit_softcapping") or None),
            HParam("add_sliding_window", _sliding_window),
            HParam("add_head_count_kv", lambda cfg: cfg.get("num_key_value_heads", 4)),
        ),
        # transformers Gemma3TextConfig defaults.
        config_defaults={
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6,
            "head_dim": 256,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "sliding_window": 4096,
            "query_pre_attn_scalar": 256,
            "tie_word_embeddings": True,
        },
        derive_config=lambda cfg: _gemma3_rope(cfg),
        transforms=(
            TensorTransform(
                r"embed_tokens\.weight$",
                _truncate_embedding,
                out_shape=lambda shape, ctx: (min(shape[0], real_vocab_size(ctx, shape[0])), *shape[1:]),
            ),
            TensorTransform(r"norm\.weight$", plus_one),
        ),
        runtime=RuntimeTraits(
            activation="gelu_tanh",
            rope_style="neox",
            embedding_scale="sqrt_hidden",
            qk_norm=True,
            post_norms=True,
            sliding_window_pattern=6,
            attn_scale_n_embd_layers=62,
            tied_embeddings_default=True,
        ),
    )
)


def _gemma3_rope(cfg: Config) -> None:
    # Gemma3TextConfig (transformers 5) splits rope into full- and sliding-attention parameter sets.
    if cfg.get("rope_parameters"):
        return
    full = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    scaling = cfg.get("rope_scaling")
    if isinstance(scaling, dict):
        full.update(scaling)
        full["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
        full.pop("type", None)
    cfg["rope_parameters"] = {
        "sliding_attention": {"rope_type": "default", "rope_theta": cfg["rope_local_base_freq"]},
        "full_attention": full,
    }
