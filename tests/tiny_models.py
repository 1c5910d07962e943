"""Tiny random HF checkpoints written by the tests themselves (unit-test scale, never the only proof)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

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
