"""Qwen2 and Qwen3 (Qwen2ForCausalLM, Qwen3ForCausalLM) -> GGUF "qwen2" / "qwen3" (conversion/qwen.py).

NEOX rope: no Q/K permutation. Qwen2 has q/k/v biases; Qwen3 has per-head q/k RMSNorm.
"""

from __future__ import annotations

from quantcli.arch.base import QK_NORM_TENSORS, ArchSpec, RuntimeTraits, register, text_model_hparams
from quantcli.arch.llama import DECODER_TENSORS

QWEN2 = register(
    ArchSpec(
        hf_architectures=("Qwen2ForCausalLM",),
        gguf_arch="qwen2",
        tensor_names=DECODER_TENSORS,
        hparams=text_model_hparams(),
        # transformers Qwen2Config defaults (it derives no head_dim).
        config_defaults={
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        },
        runtime=RuntimeTraits(rope_style="neox", attention_bias=True),
    )
)

QWEN3 = register(
    ArchSpec(
        hf_architectures=("Qwen3ForCausalLM",),
        gguf_arch="qwen3",
        tensor_names=(
            *DECODER_TENSORS,
            *QK_NORM_TENSORS,
        ),
        hparams=text_model_hparams(),
        # transformers Qwen3Config: head_dim defaults to 128 (not hidden/heads).
        config_defaults={
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "head_dim": 128,
            "tie_word_embeddings": False,
        },
        runtime=RuntimeTraits(rope_style="neox", qk_norm=True),
    )
)
