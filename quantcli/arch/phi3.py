"""Phi-3 (Phi3ForCausalLM) -> GGUF "phi3" (conversion/phi.py Phi3MiniModel).

The fused qkv_proj and gate_up_proj are written as they are (attn_qkv, ffn_up), as the converter does.
"""

from __future__ import annotations

import math

import numpy as np

from quantcli.arch.base import (
    FILE_TYPE,
    MODEL_TENSORS,
    ArchSpec,
    Config,
    HParam,
    RuntimeTraits,
    full_rope,
    register,
)
from quantcli.errors import InputInvalid, Unsupported


def _long_rope(cfg: Config) -> tuple[list[float], list[float], float] | None:
    """(long factors, short factors, attention factor) for long-context Phi-3 configs, else None."""
    rope = full_rope(cfg)
    long_factors = rope.get("long_factor")
    if not long_factors:
        return None
    short_factors = rope.get("short_factor")
    max_pos = cfg.get("n_positions", cfg.get("max_position_embeddings"))
    orig = rope["original_max_position_embeddings"]
    scale = max_pos / orig
    kind = str(rope.get("rope_type", "")).lower()
    if kind in ("su", "longrope"):
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise Unsupported(f"config.json: Phi-3 rope scaling type {kind!r} is not supported")
    if (
        not short_factors
        or len(long_factors) != len(short_factors)
        or len(long_factors) != _rope_dims(cfg) / 2
    ):
        raise InputInvalid(
            f"config.json: rope long/short factors must both have {_rope_dims(cfg) // 2} values "
            f"(long {len(long_factors)}, short {len(short_factors or [])})"
        )
    return long_factors, short_factors, attn_factor


def _rope_factor_tensors(cfg: Config) -> list[tuple[str, np.ndarray]]:
    found = _long_rope(cfg)
    if found is None:
        return []
    long_factors, short_factors, _ = found
    return [
        ("rope_factors_long.weight", np.array(long_factors, dtype=np.float32)),
        ("rope_factors_short.weight", np.array(short_factors, dtype=np.float32)),
    ]


def _attn_factor(cfg: Config) -> float | None:
    found = _long_rope(cfg)
    return None if found is None else found[2]


def _rope_dims(cfg: Config) -> int:
    rot_pct = full_rope(cfg).get("partial_rotary_factor", 1.0)
    if isinstance(rot_pct, bool) or not isinstance(rot_pct, (int, float)):
        raise InputInvalid(f"config.json: partial_rotary_factor is {rot_pct!r}, expected a number")
    return int(rot_pct * cfg["hidden_size"]) // cfg["num_attention_heads"]


PHI3 = register(
    ArchSpec(
        hf_architectures=("Phi3ForCausalLM",),
        gguf_arch="phi3",
        tensor_names=(
            *MODEL_TENSORS,
            ("model.layers.{bid}.self_attn.qkv_proj", "blk.{bid}.attn_qkv"),
            ("model.layers.{bid}.self_attn.o_proj", "blk.{bid}.attn_output"),
            ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.ffn_norm"),
            ("model.layers.{bid}.mlp.gate_up_proj", "blk.{bid}.ffn_up"),
            ("model.layers.{bid}.mlp.down_proj", "blk.{bid}.ffn_down"),
        ),
        # Phi3MiniModel.set_gguf_parameters does not call TextModel's: its own order.
        hparams=(
            HParam(
                "add_context_length", lambda cfg: cfg.get("n_positions", cfg.get("max_position_embeddings"))
            ),
            HParam(
                "add_rope_scaling_orig_ctx_len",
                lambda cfg: full_rope(cfg)["original_max_position_embeddings"],
            ),
            HParam("add_embedding_length", lambda cfg: cfg["hidden_size"]),
            HParam("add_feed_forward_length", lambda cfg: cfg["intermediate_size"]),
            HParam("add_block_count", lambda cfg: cfg["num_hidden_layers"]),
            HParam("add_head_count", lambda cfg: cfg["num_attention_heads"]),
            HParam("add_head_count_kv", lambda cfg: cfg["num_key_value_heads"]),
            HParam("add_layer_norm_rms_eps", lambda cfg: cfg["rms_norm_eps"]),
            HParam("add_rope_dimension_count", _rope_dims),
            HParam("add_rope_freq_base", lambda cfg: full_rope(cfg)["rope_theta"]),
            FILE_TYPE,
            HParam("add_sliding_window", lambda cfg: cfg.get("sliding_window") or 0),
        ),
        # transformers Phi3Config defaults.
        config_defaults={
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "partial_rotary_factor": 1.0,
            "tie_word_embeddings": False,
        },
        derive_config=lambda cfg: cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads")),
        runtime=RuntimeTraits(rope_style="neox", fused_qkv=True, fused_gate_up=True),
        # Phi-3 128k / Phi-3.5: per-dimension rope factors as tensors, attention factor as a key.
        extra_tensors=_rope_factor_tensors,
        early_hparams=(HParam("add_rope_scaling_attn_factors", _attn_factor),),
    )
)
