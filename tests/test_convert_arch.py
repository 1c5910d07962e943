"""Architecture tables: registry, effective config, and the generated llama3 rope_freqs tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference import require_module

from quantcli.arch import effective_config, get_arch, hparam_values, supported_architectures
from quantcli.arch.llama import llama3_rope_freqs, permute_rope_rows
from quantcli.errors import Unsupported


def _torch_rope_freqs(base: float, dim: int, factor: float, low: float, high: float, old: int) -> np.ndarray:
    """conversion/llama.py LlamaModel.generate_extra_tensors, verbatim."""
    torch = require_module("torch", "make install-ref")
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_freq_wavelen = old / low
    high_freq_wavelen = old / high
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32).numpy()


@pytest.mark.slow  # needs torch (the converter's own arithmetic)
@pytest.mark.parametrize(
    ("hidden", "heads", "factor"),
    [
        (4096, 32, 8.0),
        (2048, 32, 32.0),
        (3072, 24, 32.0),
        (8192, 64, 8.0),
    ],  # Llama 3.1 8B, 3.2 1B/3B, 3.3 70B
)
def test_llama3_rope_freqs_match_converter(hidden: int, heads: int, factor: float) -> None:
    cfg = effective_config(
        get_arch({"architectures": ["LlamaForCausalLM"]}),
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    )
    [(name, ours)] = llama3_rope_freqs(cfg)
    ref = _torch_rope_freqs(500000.0, hidden // heads, factor, 1.0, 4.0, 8192)
    assert name == "rope_freqs.weight" and ours.dtype == np.float32
    assert ours.tobytes() == ref.tobytes()
    assert llama3_rope_freqs({**cfg, "rope_parameters": {"rope_type": "default"}}) == []


def test_unknown_architecture_lists_supported() -> None:
    with pytest.raises(Unsupported) as info:
        get_arch({"architectures": ["MambaForCausalLM"]})
    message = str(info.value)
    for name in supported_architectures():
        assert name in message
    assert set(supported_architectures()) >= {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
        "GraniteForCausalLM",
        "Olmo2ForCausalLM",
        "SmolLM3ForCausalLM",
    }


def test_effective_config_defaults_like_autoconfig() -> None:
    qwen3 = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_attention_heads": 16}
    cfg = effective_config(get_arch(qwen3), qwen3)
    assert cfg["head_dim"] == 128  # Qwen3Config default, not hidden/heads
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_hidden_layers": 2,
        "vocab_size": 100,
    }
    spec = get_arch(llama)
    cfg = effective_config(spec, llama)
    cfg["__ftype__"] = 1
    values = dict(hparam_values(spec, cfg))
    assert values["add_key_length"] == 64 and values["add_rope_dimension_count"] == 64
    assert values["add_rope_freq_base"] == 10000.0 and values["add_context_length"] == 2048


def test_permute_rope_rows_interleaves_halves() -> None:
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)  # one head of 8 rows: halves [0..3] [4..7]
    assert permute_rope_rows(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
