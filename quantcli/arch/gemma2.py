"""Gemma 2 (Gemma2ForCausalLM) -> GGUF "gemma2" (conversion/gemma.py Gemma2Model).

Like Gemma 3 without q/k norms: every `*norm.weight` gets +1 (HF's RMSNorm computes x*(1+w)), post-norms on
both branches, attention and final logit soft-capping, every other layer sliding-window. The converter
drops `lm_head.weight` (the output is the embedding) and writes its own short list of keys: no rope keys.
"""

from __future__ import annotations

from quantcli.arch.base import (
    ATTENTION_TENSORS,
    FILE_TYPE,
    MLP_TENSORS,
    MODEL_TENSORS,
    ArchSpec,
    HParam,
    RuntimeTraits,
    TensorTransform,
    register,
)
from quantcli.arch.gemma3 import plus_one

GEMMA2 = register(
    ArchSpec(
        hf_architectures=("Gemma2ForCausalLM",),
        gguf_arch="gemma2",
        tensor_names=(
            *MODEL_TENSORS,
            *ATTENTION_TENSORS,
            ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.post_attention_norm"),
            ("model.layers.{bid}.pre_feedforward_layernorm", "blk.{bid}.ffn_norm"),
            ("model.layers.{bid}.post_feedforward_layernorm", "blk.{bid}.post_ffw_norm"),
            *MLP_TENSORS,
        ),
        # Gemma2Model.set_gguf_parameters (it does not call TextModel's), in its order.
        hparams=(
            HParam("add_context_length", lambda cfg: cfg["max_position_embeddings"]),
            HParam("add_embedding_length", lambda cfg: cfg["hidden_size"]),
            HParam("add_block_count", lambda cfg: cfg["num_hidden_layers"]),
            HParam("add_feed_forward_length", lambda cfg: cfg["intermediate_size"]),
            HParam("add_head_count", lambda cfg: cfg["num_attention_heads"]),
            HParam("add_head_count_kv", lambda cfg: cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            HParam("add_layer_norm_rms_eps", lambda cfg: cfg["rms_norm_eps"]),
            HParam("add_key_length", lambda cfg: cfg["head_dim"]),
            HParam("add_value_length", lambda cfg: cfg["head_dim"]),
            FILE_TYPE,
            HParam("add_attn_logit_softcapping", lambda cfg: cfg["attn_logit_softcapping"]),
            HParam("add_final_logit_softcapping", lambda cfg: cfg["final_logit_softcapping"]),
            HParam("add_sliding_window", lambda cfg: cfg["sliding_window"]),
        ),
        # transformers Gemma2Config defaults (the keys the converter reads).
        config_defaults={
            "vocab_size": 256000,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "query_pre_attn_scalar": 256,
            "sliding_window": 4096,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "tie_word_embeddings": True,
        },
        skip_tensors=(r"lm_head\.weight",),
        transforms=(TensorTransform(r"norm\.weight$", plus_one),),
        runtime=RuntimeTraits(
            activation="gelu_tanh",
            rope_style="neox",
            embedding_scale="sqrt_hidden",
            post_norms=True,
            sliding_window_pattern=2,
            swa_rope_base_is_main=True,
            attn_scale_n_embd_layers=46,
            tied_embeddings_default=True,
        ),
    )
)
