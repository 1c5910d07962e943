"""Granite 3.x dense (GraniteForCausalLM) -> GGUF "granite" (conversion/granite.py GraniteModel).

A Llama (same tensors, q/k rows permuted for ggml's rope) with four multipliers, written as keys after
LlamaModel's: attention (the attention scale, replacing 1/sqrt(head_dim)), embedding (times the token
embeddings), residual (times each branch output before it is added) and logits scaling (logits divided by
it). The converter pops `head_dim` before writing, so no key/value length keys.
"""

from __future__ import annotations

from dataclasses import replace

from quantcli.arch.base import Config, HParam, RuntimeTraits, register
from quantcli.arch.llama import LLAMA, LLAMA_DEFAULTS


def _derive(cfg: Config) -> None:
    cfg.pop("head_dim", None)  # GraniteModel.set_gguf_parameters: "Ignoring head_dim"
    if cfg.get("num_key_value_heads") is None:  # GraniteConfig.__post_init__
        cfg["num_key_value_heads"] = cfg.get("num_attention_heads")


def _truthy(key: str):  # the converter's `if value := hparams.get(key)`
    return lambda cfg: cfg.get(key) or None


GRANITE = register(
    replace(
        LLAMA,
        hf_architectures=("GraniteForCausalLM",),
        gguf_arch="granite",
        hparams=(
            *LLAMA.hparams,
            HParam("add_attention_scale", _truthy("attention_multiplier")),
            HParam("add_embedding_scale", _truthy("embedding_multiplier")),
            HParam("add_residual_scale", _truthy("residual_multiplier")),
            HParam("add_logit_scale", _truthy("logits_scaling")),
        ),
        # transformers GraniteConfig defaults.
        config_defaults={
            **LLAMA_DEFAULTS,
            "embedding_multiplier": 1.0,
            "logits_scaling": 1.0,
            "residual_multiplier": 1.0,
            "attention_multiplier": 1.0,
        },
        derive_config=_derive,
        runtime=RuntimeTraits(rope_style="normal", activation="silu"),
    )
)
