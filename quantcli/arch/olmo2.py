"""OLMo 2 (Olmo2ForCausalLM) -> GGUF "olmo2" (conversion/olmo.py Olmo2Model).

No pre-norms: each branch output is normalised (post_attention_norm, post_ffw_norm) before the residual
add, and q/k get an RMSNorm over the full projection width (all heads at once, not per head). NEOX rope,
no permutation; TextModel's keys (Olmo2Config has no sliding window, so no window keys).
"""

from __future__ import annotations

from quantcli.arch.base import (
    ATTENTION_TENSORS,
    MLP_TENSORS,
    QK_NORM_TENSORS,
    ArchSpec,
    Config,
    RuntimeTraits,
    register,
    text_model_hparams,
)
from quantcli.errors import Unsupported


def _derive(cfg: Config) -> None:
    if cfg.get("sliding_window") is not None:  # Olmo2Model would then write OLMo 3's window keys
        raise Unsupported("config.json: OLMo 2 with a sliding_window (OLMo 3 style) is not supported")
    if cfg.get("num_key_value_heads") is None:  # Olmo2Config.__post_init__
        cfg["num_key_value_heads"] = cfg.get("num_attention_heads")


OLMO2 = register(
    ArchSpec(
        hf_architectures=("Olmo2ForCausalLM",),
        gguf_arch="olmo2",
        tensor_names=(
            ("model.embed_tokens", "token_embd"),
            ("model.norm", "output_norm"),
            ("lm_head", "output"),
            *ATTENTION_TENSORS,
            *QK_NORM_TENSORS,
            ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.post_attention_norm"),
            ("model.layers.{bid}.post_feedforward_layernorm", "blk.{bid}.post_ffw_norm"),
            *MLP_TENSORS,
        ),
        hparams=text_model_hparams(),
        # transformers Olmo2Config defaults.
        config_defaults={
            "max_position_embeddings": 2048,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        derive_config=_derive,
        runtime=RuntimeTraits(rope_style="neox", qk_norm=True, post_norms=True, pre_norms=False),
    )
)
