"""Tiny random HF checkpoints written by the tests themselves (unit-test scale, never the only proof).

Free of pytest, so scripts/make_spm_gemma3.py (the plain-install check's Gemma 3 model) builds with it too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
from spm_fixture import VOCAB_SIZE, add_spm_tokenizer

from quantcli.loaders import open_checkpoint
from quantcli.writers.safetensors import write_file


def llama_tensor_shapes(
    *, hidden: int, layers: int, heads: int, kv_heads: int, ff: int, vocab: int, tied: bool = True
) -> dict[str, tuple[int, ...]]:
    """Every tensor of an HF LlamaForCausalLM checkpoint and its shape, in the order the builders draw them."""
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (ff, hidden),
            p + "mlp.up_proj.weight": (ff, hidden),
            p + "mlp.down_proj.weight": (hidden, ff),
        }
    return shapes


def make_tiny_llama(
    directory: Path, *, hidden: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 2, ff: int = 512,
    vocab: int = 512, seed: int = 0, tied: bool = True,
) -> Path:
    """A LlamaForCausalLM checkpoint in BF16 with random weights (config.json + model.safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def bf16(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape).astype(np.float32) * scale).astype(ml_dtypes.bfloat16)

    def norm() -> np.ndarray:
        return (1 + rng.standard_normal(hidden).astype(np.float32) * 0.1).astype(ml_dtypes.bfloat16)

    shapes = llama_tensor_shapes(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ff=ff, vocab=vocab, tied=tied)
    # Drawn in table order (norms are the 1-D tensors), so a seed always gives the same weights.
    t: dict[str, np.ndarray] = {name: norm() if len(shape) == 1 else bf16(*shape) for name, shape in shapes.items()}
    write_file(directory / "model.safetensors", t, {"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory



def make_outlier_llama(directory: Path, tokenizer_dir: Path, *, outliers: int = 6) -> Path:
    """The calibration tests' tiny Llama: two blocks of width 128 (GQA 4/2, FF 256) with SmolLM2's byte-level
    BPE vocabulary (from `tokenizer_dir`) and the first `outliers` channels of every norm x8 — the activation
    outliers AWQ exists for."""
    make_tiny_llama(directory, hidden=128, heads=4, kv_heads=2, ff=256, vocab=49152, layers=2)
    with open_checkpoint(directory) as ckpt:
        tensors = {n: np.array(ckpt.read(n)) for n in ckpt.tensor_names()}  # copies: the file is rewritten
    for name, t in tensors.items():
        if name.endswith("layernorm.weight"):
            t = t.astype(np.float32)
            t[:outliers] *= 8
            tensors[name] = t.astype(ml_dtypes.bfloat16)
    write_file(directory / "model.safetensors", tensors, {"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, directory / name)
    return directory

# Each runtime architecture at unit-test scale (test_runtime.py checks every one against transformers).
# What every tiny config shares; each architecture lists only what is its own.
_TINY_BASE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=128,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
_TINY_OWN = {
    "llama": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=32),
    "gemma3": dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", head_dim=16, num_hidden_layers=6,
        sliding_window=5, query_pre_attn_scalar=16,
    ),
    "phi3": dict(
        architectures=["Phi3ForCausalLM"], model_type="phi3", num_key_value_heads=4, rms_norm_eps=1e-5,
        rope_theta=10000.0, original_max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    # softcaps far below the real 50/30 so that the tanh bends these small random logits; rope_theta 10000
    # as every Gemma 2 (the converter writes no rope key, so llama.cpp always uses 10000)
    "gemma2": dict(
        architectures=["Gemma2ForCausalLM"], model_type="gemma2", head_dim=16, num_hidden_layers=4,
        sliding_window=5, query_pre_attn_scalar=16, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        rope_theta=10000.0,
    ),
    # granite-3.x-2b's multipliers but logits_scaling 3 (real: 8): at 8 these random logits are so flat
    # that a Q4_K_M's KLD (~8e-5) is near the last decimal llama-perplexity prints; at 3 it is ~4e-4
    "granite": dict(
        architectures=["GraniteForCausalLM"], model_type="granite", rope_theta=10000.0,
        embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=3.0,
    ),
    "olmo2": dict(
        architectures=["Olmo2ForCausalLM"], model_type="olmo2", num_key_value_heads=4, rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    # 4 layers: the 4th has no rope
    "smollm3": dict(
        architectures=["SmolLM3ForCausalLM"], model_type="smollm3", num_hidden_layers=4, rope_theta=5000000.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ),
    # mixture of experts: Mixtral with 8 experts (llama-quantize's n_expert == 8 rules), the others with 4
    "mixtral": dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=8, num_experts_per_tok=2,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    # norm_topk_prob as the released Qwen3-MoE models have it (llama.cpp's qwen3moe graph always renormalises)
    "qwen3moe": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", head_dim=32, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=True, tie_word_embeddings=False,
    ),
    # shared expert with a sigmoid gate; no renormalisation (qwen2moe graph, HF norm_topk_prob default)
    "qwen2moe": dict(
        architectures=["Qwen2MoeForCausalLM"], model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=64, shared_expert_intermediate_size=96, tie_word_embeddings=False,
    ),
    "olmoe": dict(
        architectures=["OlmoeForCausalLM"], model_type="olmoe", num_experts=4, num_experts_per_tok=2,
        num_key_value_heads=4,  # llama.cpp sizes attn_k_norm n_embd: OLMoE without GQA, as released
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=1, bos_token_id=None, eos_token_id=2,
    ),
    # gpt-oss-20b's shape scaled down: sliding and full layers, attention sinks, biases, YaRN with
    # truncate true (llama.cpp always floors/ceils the correction range; with the released false the
    # runtime follows llama.cpp, not transformers, docs/moe.md)
    "gpt-oss": dict(
        architectures=["GptOssForCausalLM"], model_type="gpt_oss", head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=5, layer_types=["sliding_attention", "full_attention"],
        rope_theta=150000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=True,
                          original_max_position_embeddings=64),
    ),
}
# Phi-4 (microsoft/phi-4) is Phi3ForCausalLM: 4:1 grouped-query attention, rope_theta 250000, no sliding
# window (null: the converter writes 0, "to distinguish Phi-4"), the original context equal to the
# maximum one, and a GPT2Tokenizer vocabulary.
_TINY_OWN["phi4"] = dict(
    _TINY_OWN["phi3"], num_key_value_heads=1, rope_theta=250000.0, original_max_position_embeddings=256,
    sliding_window=None,
)
# Rope scaling. llama3-rope: rope_freqs.weight, with wavelengths on both sides of the smoothing band.
# phi3-longrope: rope_factors_long/short and rope.scaling.attn_factor (sqrt(1 + ln 32 / ln 8) ≈ 1.63);
# llama.cpp pads every context to 256 > 8 and transformers sees more than 8 positions, so both use the
# long factors. phi3-shortrope: original context 256, which neither exceeds, so the short factors.
_TINY_OWN["llama3-rope"] = dict(
    _TINY_OWN["llama"], rope_theta=500000.0,
    rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64,
    ),
)
_TINY_OWN["phi3-longrope"] = dict(
    _TINY_OWN["phi3"], original_max_position_embeddings=8, max_position_embeddings=256, rope_scaling="longrope",
)
_TINY_OWN["phi3-shortrope"] = dict(
    _TINY_OWN["phi3"], original_max_position_embeddings=256, max_position_embeddings=1024,
    rope_scaling="longrope",
)
TINY = {arch: {**_TINY_BASE, **own} for arch, own in _TINY_OWN.items()}


# Architectures whose checkpoints get SmolLM2's GPT-2 BPE tokenizer (make_arch_checkpoint); the others get
# spm_fixture.py's SentencePiece vocabulary. OLMo 2's converter reads only GPT-2 BPE, Phi-4 ships one
# (SmolLM2's tokenizer_config names GPT2Tokenizer, as Phi-4's does); for qwen3 see
# tests/test_runtime_llamacpp_arch.py.
BPE_ARCHS = frozenset({"qwen3", "olmo2", "phi4"})
# The architectures whose conversion tests use transformers-built checkpoints of their real config class.
BUILT_ARCHS = ["gemma2", "granite", "olmo2", "smollm3", "phi4"]


def transformers_config(arch: str, **overrides: object) -> dict:
    """TINY[arch] with `overrides`, as a dict for transformers.AutoConfig.for_model. A "longrope" marker
    becomes Phi-3 long/short factors, one per rotated pair of the final head size (distinct per pair, the
    long ones far from 1, so a wrong choice or order shows)."""
    cfg = dict(TINY[arch], **overrides)
    if cfg.get("rope_scaling") == "longrope":
        n_pairs = cfg["hidden_size"] // cfg["num_attention_heads"] // 2
        cfg["rope_scaling"] = dict(
            rope_type="longrope",
            long_factor=[1.0 + 0.37 * i for i in range(n_pairs)],
            short_factor=[1.0 + 0.05 * i for i in range(n_pairs)],
        )
    return cfg


def make_arch_checkpoint(
    arch: str, directory: Path, bpe_tokenizer_dir: Path | None, dtype: str = "float32"
) -> Path:
    """A random `arch` checkpoint (TINY at rows of 256) saved by transformers in `dtype` ("bfloat16": as
    real checkpoints ship), with the SentencePiece vocabulary of spm_fixture.py, or with the byte-level BPE
    tokenizer files of `bpe_tokenizer_dir` (SmolLM2).

    Needs torch and transformers; the weights depend only on `arch` (seed 0).
    """
    import torch
    import transformers

    spm = bpe_tokenizer_dir is None
    vocab_size = VOCAB_SIZE if spm else 49152
    # rows of 256 so that Q4_K_M really uses k-quants
    cfg = transformers_config(arch, hidden_size=256, intermediate_size=512, vocab_size=vocab_size)
    if arch == "qwen3":
        cfg["head_dim"] = 64
    if "moe_intermediate_size" in cfg:
        cfg["moe_intermediate_size"] = 256
    if "shared_expert_intermediate_size" in cfg:
        cfg["shared_expert_intermediate_size"] = 512
    cfg.update(bos_token_id=1, eos_token_id=2, pad_token_id=3 if spm else 2)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**cfg)
    model = getattr(transformers, cfg["architectures"][0])(config).float().eval()
    with torch.no_grad():  # larger weights than HF's init: logits far from uniform, so PPL and KLD mean something
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.08))
    model.to(getattr(torch, dtype)).save_pretrained(directory, safe_serialization=True)
    if bpe_tokenizer_dir is None:
        add_spm_tokenizer(directory)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(bpe_tokenizer_dir / name, directory / name)
    return directory
