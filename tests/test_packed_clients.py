"""Packed outputs loaded by their real clients (`make install-clients`; CI runs these).

compressed-tensors → transformers, MLX → mlx_lm on the CPU backend, GPTQ v1 → transformers + gptqmodel,
AutoAWQ GEMM → transformers + gptqmodel (its AWQ CPU kernel) and mlx_lm (which converts it to MLX affine).
Each client's dequantized weights must equal ours bit for bit (in the model dtype), and its logits must
match our NumPy runtime's (itself checked against transformers' float32 forward on the same
weights) within the model dtype's noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reference import require_module
from tiny_models import make_tiny_llama

from quantcli.loaders import open_checkpoint
from quantcli.quants.packed import Scheme, get_format
from quantcli.writers.packed import write_packed

pytestmark = pytest.mark.slow
PROMPT = [[1, 17, 42, 99, 255, 3, 77, 500]]
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


def _ours(out_dir: Path, fmt: str, scheme: Scheme) -> dict[str, np.ndarray]:
    ckpt = open_checkpoint(out_dir, dequantize_packed=False)
    f = get_format(fmt)
    weights = {}
    for layer in range(ckpt.config["num_hidden_layers"]):
        for m in MODULES:
            module = f"model.layers.{layer}.{m}"
            suffixes = [n.removeprefix(module + ".") for n in ckpt.tensor_names() if n.startswith(module + ".")]
            weights[module] = f.dequantize({s: ckpt.read(f"{module}.{s}") for s in suffixes}, scheme)
    return weights


def _reference_logits(src: Path, weights: dict[str, np.ndarray]) -> np.ndarray:
    """transformers' float32 Llama with our dequantized weights put in: the logits the client should give."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for module, w in weights.items():
            model.get_submodule(module).weight.copy_(torch.from_numpy(w))
        return model(torch.tensor(PROMPT)).logits[0].numpy()


def _runtime_logits(packed: Path) -> np.ndarray:
    """quantcli's own NumPy runtime on the packed checkpoint (read back dequantized), float32 math."""
    from quantcli.runtime import open_source
    from quantcli.runtime.model import Model

    model = Model(open_source(packed), emulate_ggml=False)
    tokens = np.array(PROMPT[0])
    return model.forward(tokens, model.new_cache(64), output_rows=np.arange(tokens.size))


def _reference(src: Path, packed: Path, weights: dict[str, np.ndarray]) -> np.ndarray:
    """Our runtime's logits, after checking them against transformers' float32 forward on the same weights."""
    ours = _runtime_logits(packed)
    ref = _reference_logits(src, weights)
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    return ours


def _write(tmp_path: Path, fmt: str, scheme: Scheme) -> tuple[Path, Path]:
    src = make_tiny_llama(tmp_path / "src", layers=2)
    out = tmp_path / f"{fmt}{scheme.bits}"
    write_packed(open_checkpoint(src), out, get_format(fmt), scheme)
    return src, out


def _close(client: np.ndarray, ref: np.ndarray, rel: float = 0.03) -> None:
    """Within the model dtype's noise: max |Δlogit| relative to the largest logit, and the same top-1."""
    scale = np.abs(ref).max()
    assert np.abs(client - ref).max() < rel * scale, (np.abs(client - ref).max(), scale)
    assert (client.argmax(-1) == ref.argmax(-1)).mean() >= 0.875


@pytest.mark.parametrize("bits", [4, 8, 2])
def test_compressed_tensors_in_transformers(tmp_path: Path, bits: int) -> None:
    torch = require_module("torch")
    require_module("compressed_tensors")
    from transformers import AutoModelForCausalLM

    scheme = Scheme(bits, 64 if bits != 2 else 32, "bfloat16")
    src, out = _write(tmp_path, "ct", scheme)
    ours = _ours(out, "ct", scheme)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    for module, w in ours.items():
        client_w = model.get_submodule(module).weight.detach().float().numpy()
        assert np.array_equal(client_w, w), module
    _close(logits, _reference(src, out, ours))


@pytest.mark.parametrize("bits", [4, 3, 8])
def test_mlx_in_mlx_lm(tmp_path: Path, bits: int) -> None:
    mx = require_module("mlx.core")
    from mlx_lm.utils import load_model

    scheme = Scheme(bits, 64, "bfloat16")
    src, out = _write(tmp_path, "mlx", scheme)
    ours = _ours(out, "mlx", scheme)
    model, _ = load_model(out)
    for module, w in ours.items():
        layer = model
        for part in module.split("."):
            layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
        assert type(layer).__name__ == "QuantizedLinear"
        client_w = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=bits)
        assert np.array_equal(np.array(client_w.astype(mx.float32)), w), module
    ref = _reference(src, out, ours)
    # mlx_lm computes every activation in bf16 (transformers' CT path keeps more in float32): measured
    # max |Δ| ~5 % of the largest logit here, ~1.2 % once MLX runs in float32.
    _close(np.array(model(mx.array(PROMPT)).astype(mx.float32))[0], ref, rel=0.08)
    model.set_dtype(mx.float32)
    _close(np.array(model(mx.array(PROMPT)))[0], ref, rel=0.02)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_in_transformers_gptqmodel(tmp_path: Path, bits: int) -> None:
    torch = require_module("torch")
    require_module("gptqmodel")
    from transformers import AutoModelForCausalLM

    scheme = Scheme(bits, 64, "float16")
    src, out = _write(tmp_path, "gptq", scheme)
    ours = _ours(out, "gptq", scheme)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cpu")
    with torch.no_grad():
        for module, w in ours.items():
            client_w = model.get_submodule(module).dequantize_weight().float().numpy().T  # (in, out) → (out, in)
            assert np.array_equal(client_w, w), module
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    _close(logits, _reference(src, out, ours))


def test_awq_packing_equals_gptqmodel_pack_awq() -> None:
    """Our qweight/qzeros words are the ones gptqmodel's own AWQ packer writes for the same codes."""
    torch = require_module("torch")
    require_module("gptqmodel")
    from gptqmodel.quantization.awq.utils.packing_utils import pack_awq as client_pack

    from quantcli.quants.packed.awq import pack_awq

    rng = np.random.default_rng(5)
    codes, zeros = rng.integers(0, 16, size=(64, 48)), rng.integers(0, 16, size=(2, 48))
    qweight, qzeros = client_pack(torch.from_numpy(codes).int(), torch.from_numpy(zeros).int(), 4)
    assert np.array_equal(pack_awq(codes), qweight.numpy())
    assert np.array_equal(pack_awq(zeros), qzeros.numpy())


def test_awq_in_transformers_gptqmodel(tmp_path: Path) -> None:
    torch = require_module("torch")
    require_module("gptqmodel")
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
    from transformers import AutoModelForCausalLM

    scheme = Scheme(4, 64, "float16")
    src, out = _write(tmp_path, "awq", scheme)
    ours = _ours(out, "awq", scheme)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cpu")
    with torch.no_grad():
        for module, w in ours.items():
            layer = model.get_submodule(module)
            assert "Awq" in type(layer).__name__, type(layer)
            client_w = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, 4, 64).float().numpy().T
            assert np.array_equal(client_w, w), module
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    _close(logits, _reference(src, out, ours))


def test_awq_in_mlx_lm(tmp_path: Path) -> None:
    mx = require_module("mlx.core")
    from mlx_lm.utils import load_model

    scheme = Scheme(4, 64, "float16")
    src, out = _write(tmp_path, "awq", scheme)
    ours = _ours(out, "awq", scheme)
    model, _ = load_model(out)
    for module, w in ours.items():
        layer = model
        for part in module.split("."):
            layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
        assert type(layer).__name__ == "QuantizedLinear"
        client_w = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=64, bits=4)
                            .astype(mx.float32))
        # mlx-lm stores bias = -z·scale in float16 and computes q·scale + bias in float16: three roundings
        # (bias, product, sum) of half a float16 step each, so |Δ| <= 2^-10 (|bias| + 15·scale) per group.
        bound = (np.abs(np.array(layer.biases.astype(mx.float32))) + 15 * np.array(layer.scales.astype(mx.float32)))
        assert np.all(np.abs(client_w - w) <= np.repeat(bound * 2.0**-10, 64, axis=1)), module
    ref = _reference(src, out, ours)
    # measured max |Δ| 0.8 % of the largest logit in float16 (the checkpoint's dtype), 0.17 % in float32
    _close(np.array(model(mx.array(PROMPT)).astype(mx.float32))[0], ref)
    model.set_dtype(mx.float32)
    _close(np.array(model(mx.array(PROMPT)))[0], ref, rel=0.01)


def test_golden_vectors_still_match_clients() -> None:
    require_module("gptqmodel")
    require_module("mlx.core")
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(repo / "scripts" / "make_packed_goldens.py"), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _ct_library_checkpoint(directory: Path) -> None:
    """A W4A16 checkpoint written by compressed-tensors' own ModelCompressor (min-max scales)."""
    torch = require_module("torch")
    require_module("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": preset_name_to_scheme("W4A16", ["Linear"])}, ignore=["lm_head"])
    )
    for module in model.modules():
        if hasattr(module, "quantization_scheme") and hasattr(module, "weight_scale"):
            args = module.quantization_scheme.weights
            groups = module.weight.data.reshape(module.weight.shape[0], -1, args.group_size)
            scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
            module.weight_scale.data.copy_(scale)
            module.weight_zero_point.data.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)


def test_reads_checkpoint_written_by_compressed_tensors(tmp_path: Path) -> None:
    torch = require_module("torch")
    from transformers import AutoModelForCausalLM

    from quantcli.loaders.packed import PackedCheckpoint

    _ct_library_checkpoint(tmp_path / "ct")
    ckpt = open_checkpoint(tmp_path / "ct")
    assert isinstance(ckpt, PackedCheckpoint) and ckpt.scheme == Scheme(4, 128, "bfloat16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.bfloat16)
    with torch.no_grad():
        model(torch.tensor(PROMPT))  # compressed-tensors decompresses on the first forward
    for layer in range(2):
        for m in MODULES:
            name = f"model.layers.{layer}.{m}"
            client = model.get_submodule(name).weight.detach().float().numpy()
            assert np.array_equal(np.asarray(ckpt.read(f"{name}.weight"), dtype=np.float32), client), name
