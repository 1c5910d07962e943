"""Phi-3 (Phi3ForCausalLM) -> GGUF "phi3" (conversion/phi.py Phi3MiniModel).

The fused qkv_proj and gate_up_proj are written as they are (attn_qkv, ffn_up), as the converter does.
"""

from __future__ import annotations

from quantcli.arch.base import FILE_TYPE, ArchSpec, Config, HParam, RuntimeTraits, full_rope, register


def _rope_dims(cfg: Config) -> int:
    rot_pct = full_rope(cfg).get("partial_rotary_factor", 1.0)
    return int(rot_pct * cfg["hidden_size"]) // cfg["num_attention_heads"]


PHI3 = register(
    ArchSpec(
        hf_architectures=("Phi3ForCausalLM",),
        gguf_arch="phi3",
        tensor_names=(
            ("model.embed_tokens", "token_embd"),
            ("model.norm", "output_norm"),
            ("lm_head", "output"),
            ("model.layers.{bid}.input_layernorm", "blk.{bid}.attn_norm"),
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
    )
)
