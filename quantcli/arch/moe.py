"""Mixture-of-experts families: Mixtral (GGUF "llama" with experts, conversion/llama.py LlamaModel),
Qwen2-MoE ("qwen2moe", conversion/qwen.py Qwen2MoeModel: a shared expert with a sigmoid gate besides the
routed ones), Qwen3-MoE ("qwen3moe", Qwen3MoeModel), OLMoE ("olmoe", conversion/olmo.py OlmoeModel) and
GPT-OSS ("gpt-oss", conversion/gpt_oss.py GptOssModel: experts already stacked in the checkpoint).

The converter stacks each layer's per-expert matrices into one 3-D tensor per projection (`ExpertStack`,
done by sources/hf.py one expert at a time); the router (`ffn_gate_inp`) stays F32. The expert count
keys follow transformers' attribute maps (AutoConfig.to_dict() renames the alias): Mixtral and Qwen3-MoE
report `num_local_experts`, Qwen2-MoE and OLMoE `num_experts`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from quantcli.arch.base import (
    ATTENTION_TENSORS,
    MODEL_TENSORS,
    QK_NORM_TENSORS,
    ArchSpec,
    Config,
    ExpertStack,
    HParam,
    Mxfp4Experts,
    RuntimeTraits,
    SplitTensor,
    TensorPart,
    register,
    text_model_hparams,
)
from quantcli.arch.llama import LLAMA, LLAMA_DEFAULTS

# (HF, GGUF) templates shared by the families below: decoder without the dense MLP.
_MOE_DECODER: tuple[tuple[str, str], ...] = (
    *MODEL_TENSORS,
    *ATTENTION_TENSORS,
    ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.ffn_norm"),
)
_QWEN_ROUTER = (("model.layers.{bid}.mlp.gate", "blk.{bid}.ffn_gate_inp"),)
# Qwen2MoeModel / OlmoeModel.modify_tensors stack in this order: down, gate, up.
_QWEN_STACKS = (
    ExpertStack("model.layers.{bid}.mlp.experts.{xid}.down_proj", "blk.{bid}.ffn_down_exps"),
    ExpertStack("model.layers.{bid}.mlp.experts.{xid}.gate_proj", "blk.{bid}.ffn_gate_exps"),
    ExpertStack("model.layers.{bid}.mlp.experts.{xid}.up_proj", "blk.{bid}.ffn_up_exps"),
)


def _expert_keys(canonical: str, alias: str, n_expert: int, n_used: int) -> Callable[[Config], None]:
    """AutoConfig's attribute map: a config.json `alias` is reported under `canonical`; class defaults for
    the counts (set here, not in config_defaults, so that a config.json alias wins over a default)."""

    def derive(cfg: Config) -> None:
        if cfg.get(alias) is not None:
            cfg[canonical] = cfg.pop(alias)
        cfg.setdefault(canonical, n_expert)
        cfg.setdefault("num_experts_per_tok", n_used)

    return derive


MIXTRAL = register(
    replace(
        LLAMA,
        hf_architectures=("MixtralForCausalLM",),
        tensor_names=(
            *_MOE_DECODER,
            ("model.layers.{bid}.block_sparse_moe.gate", "blk.{bid}.ffn_gate_inp"),
        ),
        # transformers MixtralConfig
        config_defaults={
            **LLAMA_DEFAULTS, "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5,
        },
        # MixtralConfig keeps head_dim None (no key_length key), unlike LlamaConfig
        derive_config=_expert_keys("num_local_experts", "num_experts", 8, 2),
        # LlamaModel.modify_tensors: w1, w2, w3 (gate, down, up)
        expert_stacks=(
            ExpertStack("model.layers.{bid}.block_sparse_moe.experts.{xid}.w1", "blk.{bid}.ffn_gate_exps"),
            ExpertStack("model.layers.{bid}.block_sparse_moe.experts.{xid}.w2", "blk.{bid}.ffn_down_exps"),
            ExpertStack("model.layers.{bid}.block_sparse_moe.experts.{xid}.w3", "blk.{bid}.ffn_up_exps"),
        ),
    )
)

# Qwen2MoeModel.set_gguf_parameters: the expert sizes come after TextModel's keys (file type included).
_QWEN_MOE_HPARAMS = (
    *text_model_hparams(),
    HParam("add_expert_feed_forward_length", lambda cfg: cfg.get("moe_intermediate_size")),
    HParam("add_expert_shared_feed_forward_length", lambda cfg: cfg.get("shared_expert_intermediate_size")),
)

QWEN2_MOE = register(
    ArchSpec(
        hf_architectures=("Qwen2MoeForCausalLM",),
        gguf_arch="qwen2moe",
        tensor_names=(
            *_MOE_DECODER,
            *_QWEN_ROUTER,
            ("model.layers.{bid}.mlp.shared_expert_gate", "blk.{bid}.ffn_gate_inp_shexp"),
            ("model.layers.{bid}.mlp.shared_expert.gate_proj", "blk.{bid}.ffn_gate_shexp"),
            ("model.layers.{bid}.mlp.shared_expert.up_proj", "blk.{bid}.ffn_up_shexp"),
            ("model.layers.{bid}.mlp.shared_expert.down_proj", "blk.{bid}.ffn_down_shexp"),
        ),
        hparams=_QWEN_MOE_HPARAMS,
        # transformers Qwen2MoeConfig
        config_defaults={
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "moe_intermediate_size": 1408,
            "shared_expert_intermediate_size": 5632,
            "tie_word_embeddings": False,
        },
        derive_config=_expert_keys("num_experts", "num_local_experts", 60, 4),
        expert_stacks=_QWEN_STACKS,
        # src/models/qwen2moe.cpp: q/k/v biases, no renormalisation of the top-k weights
        runtime=RuntimeTraits(rope_style="neox", attention_bias=True, expert_weights_norm=False),
    )
)

QWEN3_MOE = register(
    ArchSpec(
        hf_architectures=("Qwen3MoeForCausalLM",),
        gguf_arch="qwen3moe",
        tensor_names=(*_MOE_DECODER, *QK_NORM_TENSORS, *_QWEN_ROUTER),
        hparams=_QWEN_MOE_HPARAMS,
        # transformers Qwen3MoeConfig (no head_dim default: the converter then writes no key_length)
        config_defaults={
            "max_position_embeddings": 32768,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "moe_intermediate_size": 768,
            "tie_word_embeddings": False,
        },
        derive_config=_expert_keys("num_local_experts", "num_experts", 128, 8),
        expert_stacks=_QWEN_STACKS,
        # src/models/qwen3moe.cpp: norm_w true whatever norm_topk_prob says
        runtime=RuntimeTraits(rope_style="neox", qk_norm=True, expert_weights_norm=True),
    )
)


def _olmoe_hparams() -> tuple[HParam, ...]:
    # OlmoeModel.set_gguf_parameters re-adds the RMS epsilon as 1e-5: gguf-py overwrites the value in place.
    return tuple(
        HParam(hp.method, lambda cfg: 1e-5) if hp.method == "add_layer_norm_rms_eps" else hp
        for hp in text_model_hparams()
    )


OLMOE = register(
    ArchSpec(
        hf_architectures=("OlmoeForCausalLM",),
        gguf_arch="olmoe",
        tensor_names=(*_MOE_DECODER, *QK_NORM_TENSORS, *_QWEN_ROUTER),
        hparams=_olmoe_hparams(),
        # transformers OlmoeConfig
        config_defaults={
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        derive_config=_expert_keys("num_experts", "num_local_experts", 64, 8),
        expert_stacks=_QWEN_STACKS,
        # src/models/olmoe.cpp: q/k RMSNorm over the whole projection (not per head), no renormalisation
        runtime=RuntimeTraits(rope_style="neox", qk_norm=True, expert_weights_norm=False),
    )
)


def _transposed(data: np.ndarray) -> np.ndarray:
    return data.swapaxes(-1, -2)


def _swapped(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-2], shape[-1], shape[-2])


def _half(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-1], shape[-1] // 2)


def _half_rows(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-2], shape[-2] // 2, shape[-1])


# GptOssModel.modify_tensors. transformers stores each layer's experts stacked: gate_up_proj (E, n_embd,
# 2 * n_ff) with gate and up interleaved along the last axis (gate at even, up at odd columns),
# down_proj (E, n_ff, n_embd), both as x @ W; the converter transposes them to (E, rows, cols), splits
# gate_up into gate then up (weights and biases alike), and appends .weight to the attention sinks.
_GPT_OSS_SPLITS = (
    SplitTensor("model.layers.{bid}.self_attn.sinks", (
        TensorPart("blk.{bid}.attn_sinks.weight", lambda data: data, lambda shape: shape),
    )),
    SplitTensor("model.layers.{bid}.mlp.experts.down_proj", (
        TensorPart("blk.{bid}.ffn_down_exps.weight", _transposed, _swapped),
    )),
    SplitTensor("model.layers.{bid}.mlp.experts.down_proj_bias", (
        TensorPart("blk.{bid}.ffn_down_exps.bias", lambda data: data, lambda shape: shape),
    )),
    SplitTensor("model.layers.{bid}.mlp.experts.gate_up_proj", (
        TensorPart("blk.{bid}.ffn_gate_exps.weight", lambda data: _transposed(data)[:, ::2, :],
                   lambda shape: _half_rows(_swapped(shape))),
        TensorPart("blk.{bid}.ffn_up_exps.weight", lambda data: _transposed(data)[:, 1::2, :],
                   lambda shape: _half_rows(_swapped(shape))),
    )),
    SplitTensor("model.layers.{bid}.mlp.experts.gate_up_proj_bias", (
        TensorPart("blk.{bid}.ffn_gate_exps.bias", lambda data: data[..., ::2], _half),
        TensorPart("blk.{bid}.ffn_up_exps.bias", lambda data: data[..., 1::2], _half),
    )),
)

GPT_OSS = register(
    ArchSpec(
        hf_architectures=("GptOssForCausalLM",),
        gguf_arch="gpt-oss",
        tensor_names=(
            *MODEL_TENSORS,
            *ATTENTION_TENSORS,
            ("model.layers.{bid}.post_attention_layernorm", "blk.{bid}.post_attention_norm"),
            ("model.layers.{bid}.mlp.router", "blk.{bid}.ffn_gate_inp"),
        ),
        # TextModel's keys, then GptOssModel.set_gguf_parameters' two
        hparams=(
            *text_model_hparams(),
            HParam("add_sliding_window", lambda cfg: cfg["sliding_window"]),
            HParam("add_expert_feed_forward_length", lambda cfg: cfg["intermediate_size"]),
        ),
        # transformers GptOssConfig (its rope default is the released models' YaRN)
        config_defaults={
            "num_hidden_layers": 36,
            "hidden_size": 2880,
            "intermediate_size": 2880,
            "head_dim": 64,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "sliding_window": 128,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 150000.0,
            "rope_scaling": {
                "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096,
            },
            "tie_word_embeddings": False,
        },
        derive_config=_expert_keys("num_local_experts", "num_experts", 128, 4),
        split_tensors=_GPT_OSS_SPLITS,
        packed_formats=False,
        # GptOssModel.generate_extra_tensors: openai/gpt-oss-* ship their experts in MXFP4
        mxfp4_experts=(
            Mxfp4Experts("model.layers.{bid}.mlp.experts.down_proj", ("blk.{bid}.ffn_down_exps.weight",)),
            Mxfp4Experts(
                "model.layers.{bid}.mlp.experts.gate_up_proj",
                ("blk.{bid}.ffn_gate_exps.weight", "blk.{bid}.ffn_up_exps.weight"),
            ),
        ),
        # src/models/openai-moe.cpp: sliding window on even layers (load_swa_pattern(ml, 2)) with the main
        # rope base and scale, attention sinks (a tensor), biases everywhere (tensors)
        runtime=RuntimeTraits(
            rope_style="neox", attention_bias=True, sliding_window_pattern=2, swa_rope_base_is_main=True,
            swa_rope_scale_is_main=True, yarn_rope=True, ffn_norm="post_attention_norm",
            expert_gating="softmax_weight", expert_glu="swiglu_oai",
        ),
    )
)
