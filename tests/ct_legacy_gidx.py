"""Run under compressed-tensors 0.12 (the last release that writes and reads `actorder: "group"`):
write a W4A16 checkpoint whose columns are grouped by a random g_idx (GPTQ's act-order layout) with
compressed-tensors' own ModelCompressor, then decompress it with the same library and save the weights.

    PYTHONPATH=<compressed-tensors 0.12 target dir> python tests/ct_legacy_gidx.py OUT_DIR WEIGHTS.safetensors

tests/test_prequantized.py runs it (`make install-clients` installs that compressed-tensors).
"""

from __future__ import annotations

import sys
from pathlib import Path

import compressed_tensors
import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    apply_quantization_config,
)
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

GROUP = 32


def main(out: Path, weights_file: Path) -> None:
    assert compressed_tensors.__version__.startswith("0.12."), compressed_tensors.__version__
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=704, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP,
                            actorder="group")
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if not hasattr(module, "weight_g_idx"):
            continue
        n = module.weight.shape[1]
        perm = torch.randperm(n, generator=gen)
        g_idx = torch.empty(n, dtype=torch.int32)
        g_idx[perm] = torch.arange(n, dtype=torch.int32) // GROUP  # GPTQ act-order: groups in perm's order
        groups = module.weight.data[:, perm].reshape(module.weight.shape[0], -1, GROUP)
        scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
        module.weight_scale.data.copy_(scale)
        module.weight_zero_point.data.copy_(zero)
        module.weight_g_idx.data.copy_(g_idx)
    compressor = ModelCompressor.from_pretrained_model(model)
    state = compressor.compress(model)
    model.save_pretrained(out, state_dict=state)
    compressor.update_config(out)

    # compressed-tensors' own read-back of what it wrote
    fresh = LlamaForCausalLM(cfg).to(torch.bfloat16)
    ModelCompressor.from_pretrained(out).decompress(model_path=str(out), model=fresh)
    save_file({n: p.detach().float().contiguous() for n, p in fresh.named_parameters() if n.endswith("proj.weight")},
              weights_file)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
