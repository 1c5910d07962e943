"""Packed outputs loaded by their real clients (`make install-clients`; CI runs these).

compressed-tensors → transformers, MLX → mlx_lm on the CPU backend, GPTQ v1 → transformers + gptqmodel,
AutoAWQ GEMM → transformers + gptqmodel (its AWQ CPU kernel) and mlx_lm (which converts it to MLX affine).
Each client's dequantized weights must equal ours bit for bit (in the model dtype), and its logits must
match our NumPy runtime's (itself checked against transformers' float32 forward on the same
weights) within the model dtype's noise. The calibrated outputs (--method gptq/awq/awq-gptq: act-order's
permuted g_idx, AWQ's folded norms) are checked the same way, and through llama.cpp's converter
(docs/calibration.md, "Calibrated outputs in their clients").
"""

from __future__ import annotations

import json
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


def _reference_logits(src: Path, packed: Path, weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """transformers' float32 Llama (the architecture of `src`) holding every tensor of the packed checkpoint
    as our packed reader gives it (dequantized weights; norms, which AWQ may have folded; embeddings), with
    `weights` (module -> weight) put in instead where given: the logits the client should give."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with open_checkpoint(packed) as ckpt, torch.no_grad():
        for name, param in model.named_parameters():
            if name in ckpt:  # lm_head is absent when tied to the embeddings
                param.copy_(torch.from_numpy(np.asarray(ckpt.read(name), dtype=np.float32)))
        for module, w in (weights or {}).items():
            model.get_submodule(module).weight.copy_(torch.from_numpy(w))
        return model(torch.tensor(PROMPT)).logits[0].numpy()


def _runtime_logits(packed: Path) -> np.ndarray:
    """quantcli's own NumPy runtime on the packed checkpoint (read back dequantized), float32 math."""
    from quantcli.runtime import open_source
    from quantcli.runtime.model import Model

    model = Model(open_source(packed), emulate_ggml=False)
    tokens = np.array(PROMPT[0])
    return model.forward(tokens, model.new_cache(64), output_rows=np.arange(tokens.size))


def _reference(src: Path, packed: Path) -> np.ndarray:
    """Our runtime's logits, after checking them against transformers' float32 forward on the same weights."""
    ours = _runtime_logits(packed)
    ref = _reference_logits(src, packed)
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
    _close(logits, _reference(src, out))


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
    ref = _reference(src, out)
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
    _close(logits, _reference(src, out))


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
    _close(logits, _reference(src, out))


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
    ref = _reference(src, out)
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


# ---- calibrated outputs: --method gptq / awq / awq-gptq ---------------------------------------------------
# The checkpoints issue #14 measures: GPTQ's act-order (a permuted g_idx in --format gptq), AWQ's folded
# norms. A tiny Llama with activation outliers (tiny_models.make_outlier_llama: AWQ folds real scales),
# calibrated on 4 x 64 tokens, group 32; each checkpoint is made once for the module.

CALIB_GROUP = 32


class Calibrated:
    """(format, method, act-order) -> the calibrated checkpoint of `source`, converted on first use."""

    def __init__(self, root: Path, tokenizer_dir: Path) -> None:
        from tiny_models import make_outlier_llama

        from quantcli.runtime.calibrate import DEFAULT_CALIB_TEXT

        self.root = root
        self.source = make_outlier_llama(root / "src", tokenizer_dir)
        self.text = root / "calib.txt"
        self.text.write_text(DEFAULT_CALIB_TEXT.read_text(encoding="utf-8")[:20000])
        self.made: dict[tuple[str, str, bool | None], Path] = {}

    def __call__(self, fmt: str, method: str, act_order: bool | None = None) -> Path:
        from badinputs import run_cli_in_process

        key = (fmt, method, act_order)
        if key not in self.made:
            out = self.root / "-".join([fmt, method, {None: "", True: "act", False: "noact"}[act_order]])
            order = [] if act_order is None else ["--act-order" if act_order else "--no-act-order"]
            code, _, err = run_cli_in_process([
                "convert", str(self.source), "--format", fmt, "--bits", "4", "--group-size", str(CALIB_GROUP),
                "--method", method, *order, "--calib", str(self.text), "--calib-samples", "4",
                "--calib-seq-len", "64", "-o", str(out),
            ])  # fmt: skip
            assert code == 0, err
            self.made[key] = out
        return self.made[key]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Calibrated:
    return Calibrated(tmp_path_factory.mktemp("calibrated"), smollm2_dir)


def _scheme(out: Path) -> Scheme:
    with open_checkpoint(out) as ckpt:
        return ckpt.scheme


def _stored(out: Path) -> dict[str, np.ndarray]:
    with open_checkpoint(out, dequantize_packed=False) as ckpt:
        return {n: np.array(ckpt.read(n)) for n in ckpt.tensor_names()}


def _client_forward_weights(model, module: str, dtype) -> np.ndarray:  # noqa: ANN001  (torch objects)
    """The weight a torch client's forward kernel really applies: its layer run on the identity (in, out)."""
    import torch

    layer = model.get_submodule(module)
    with torch.no_grad():
        return layer(torch.eye(layer.in_features, dtype=dtype)).float().numpy().T


@pytest.mark.parametrize(("method", "act_order", "rel"), [
    ("gptq", True, 0.03), ("gptq", False, 0.03),
    # the folded norms carry the x8 outliers into bf16 activations: measured 3.6 % (gptq: 1.6 %)
    ("awq-gptq", True, 0.05),
])  # fmt: skip
def test_calibrated_ct_in_transformers(calibrated: Calibrated, method: str, act_order: bool, rel: float) -> None:
    """compressed-tensors keeps contiguous groups under act-order (llm-compressor's `actorder: static`): no
    weight_g_idx is written, so transformers reads act-order and plain GPTQ outputs the same way."""
    torch = require_module("torch")
    require_module("compressed_tensors")
    from transformers import AutoModelForCausalLM

    out = calibrated("ct", method, act_order)
    assert not [n for n in _stored(out) if n.endswith("weight_g_idx")]
    ours = _ours(out, "ct", _scheme(out))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    for module, w in ours.items():
        assert np.array_equal(model.get_submodule(module).weight.detach().float().numpy(), w), module
    _close(logits, _reference(calibrated.source, out), rel=rel)


def _contiguous_reading(stored: dict[str, np.ndarray], module: str, scheme: Scheme) -> np.ndarray:
    """A GPTQ weight read as if g_idx were column // group (what a reader ignoring act-order computes)."""
    parts = {s: stored[f"{module}.{s}"] for s in ("qweight", "qzeros", "scales")}
    n = parts["scales"].shape[0] * scheme.group_size
    return get_format("gptq").dequantize({**parts, "g_idx": np.arange(n, dtype=np.int32) // scheme.group_size}, scheme)


@pytest.mark.parametrize("method", ["gptq", "awq-gptq"])
def test_calibrated_gptq_act_order_in_transformers_gptqmodel(calibrated: Calibrated, method: str) -> None:
    """desc_act with a permuted g_idx. GPTQModel's CPU kernel (TorchAtenLinear) gathers the input columns by
    g_idx once (`ret_idx`) and repacks into torch's int4 layout with bf16 scales on the first forward, so
    its dequantize_weight is read before that and its forward is checked apart, on the identity."""
    torch = require_module("torch")
    require_module("gptqmodel")
    from transformers import AutoModelForCausalLM

    out = calibrated("gptq", method, True)
    scheme, stored = _scheme(out), _stored(out)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["desc_act"] is True
    ours = _ours(out, "gptq", scheme)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cpu")
    for module, w in ours.items():
        g_idx = stored[f"{module}.g_idx"]
        assert not np.array_equal(g_idx, np.arange(g_idx.size) // scheme.group_size), module  # really permuted
        with torch.no_grad():
            client_w = model.get_submodule(module).dequantize_weight().float().numpy().T
        assert np.array_equal(client_w, w), module
    for module, w in ours.items():
        # bf16 scales and activations: measured <= 0.55 % of the largest weight; reading the groups as
        # contiguous would be >= 40 % off
        forward_w = _client_forward_weights(model, module, torch.float16)
        scale = np.abs(w).max()
        assert np.abs(forward_w - w).max() < 0.01 * scale, module
        assert np.abs(forward_w - _contiguous_reading(stored, module, scheme)).max() > 0.2 * scale, module
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    _close(logits, _reference(calibrated.source, out))


def test_calibrated_awq_in_transformers_gptqmodel(calibrated: Calibrated) -> None:
    torch = require_module("torch")
    require_module("gptqmodel")
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
    from transformers import AutoModelForCausalLM

    out = calibrated("awq", "awq")
    ours = _ours(out, "awq", _scheme(out))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cpu")
    for module, w in ours.items():
        layer = model.get_submodule(module)
        assert "Awq" in type(layer).__name__, type(layer)
        with torch.no_grad():
            client_w = dequantize_gemm(layer.qweight, layer.qzeros, layer.scales, 4, CALIB_GROUP).float().numpy().T
        assert np.array_equal(client_w, w), module
        # its CPU kernel computes in bf16: measured <= 0.6 % of the largest weight
        assert np.abs(_client_forward_weights(model, module, torch.float16) - w).max() < 0.01 * np.abs(w).max()
    with torch.no_grad():
        logits = model(torch.tensor(PROMPT)).logits[0].float().numpy()
    _close(logits, _reference(calibrated.source, out))


def _mlx_layer(model, module: str):  # noqa: ANN001, ANN202  (mlx objects)
    layer = model
    for part in module.split("."):
        layer = layer[int(part)] if part.isdigit() else getattr(layer, part)
    return layer


@pytest.mark.parametrize(("fmt", "method"), [("mlx", "awq-gptq"), ("awq", "awq")])
def test_calibrated_in_mlx_lm(calibrated: Calibrated, fmt: str, method: str) -> None:
    """mlx-lm computes our model: its weights are ours (bit for bit for mlx; within its float16 bias
    roundings for awq, as in test_awq_in_mlx_lm), and in float32 its forward equals transformers' on those
    weights and our reader's other tensors (the folded norms) within float32 noise. The model dtype's
    noise is larger here than on round-to-nearest outputs: mlx's dequantization q·scale + bias rounds the
    product and the sum, and the outlier channels AWQ scaled up amplify it (measured: 10.7 % of the largest
    logit in bf16 for mlx awq-gptq; in float32, with the weights unrounded, 2.6 % from our runtime on the
    bf16-rounded weights)."""
    mx = require_module("mlx.core")
    from mlx_lm.utils import load_model

    out = calibrated(fmt, method, True if "gptq" in method else None)
    ours = _ours(out, fmt, _scheme(out))
    model, _ = load_model(out)
    for module, w in ours.items():
        layer = _mlx_layer(model, module)
        assert type(layer).__name__ == "QuantizedLinear"
        client_w = np.array(mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=CALIB_GROUP, bits=4)
                            .astype(mx.float32))  # fmt: skip
        if fmt == "mlx":
            assert np.array_equal(client_w, w), module
        else:
            bound = np.abs(np.array(layer.biases.astype(mx.float32))) + 15 * np.array(layer.scales.astype(mx.float32))
            assert np.all(np.abs(client_w - w) <= np.repeat(bound * 2.0**-10, CALIB_GROUP, axis=1)), module
    model.set_dtype(mx.float32)
    client_f32 = {m: np.array(mx.dequantize(*(getattr(_mlx_layer(model, m), a) for a in ("weight", "scales", "biases")),
                                            group_size=CALIB_GROUP, bits=4)) for m in ours}  # fmt: skip
    ref = _reference_logits(calibrated.source, out, client_f32)
    client = np.array(model(mx.array(PROMPT)))[0]
    # measured 1e-6 of the largest logit (the unquantized source: 1e-6 too)
    assert np.abs(client - ref).max() < 1e-4 * np.abs(ref).max(), np.abs(client - ref).max()


def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize(("fmt", "method", "act_order"), [
    ("ct", "gptq", True), ("ct", "gptq", False), ("gptq", "gptq", True), ("gptq", "awq-gptq", True),
])  # fmt: skip
def test_calibrated_in_llama_cpp_converter(calibrated: Calibrated, tmp_path: Path, fmt: str, method: str,
                                           act_order: bool) -> None:  # fmt: skip
    """convert_hf_to_gguf.py --outtype f16 (what scripts/measure_calibration.py scores) reads our calibrated
    checkpoints, g_idx included, to our dequantization. It multiplies code·scale in float32: for GPTQ
    (float16 scales, a float16 model) that is the float16 value every client reads, so the F16 GGUF is
    byte for byte quantcli's own `--type f16` of the checkpoint. A compressed-tensors code·scale with a
    bf16 scale needs up to 11 significant bits: F16 holds it exactly, while transformers rounds it to bf16
    (formats/packed-safetensors.md: we read the client's value); rounded to bf16, llama.cpp's F16 is ours."""
    require_module("torch")
    from reference import convert_with_llamacpp

    from quantcli.engine import convert_model
    from quantcli.quants.packed.base import round_to

    out = calibrated(fmt, method, act_order)
    theirs_path, ours_path = tmp_path / "llamacpp.gguf", tmp_path / "ours.gguf"
    proc = convert_with_llamacpp(out, theirs_path, "f16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    convert_model(out, ours_path, out_type="f16")
    theirs, ours = _gguf_tensors(theirs_path), _gguf_tensors(ours_path)
    assert sorted(theirs) == sorted(ours) and len(ours) == 2 * 9 + 2
    for name, t in theirs.items():
        assert t.dtype == ours[name].dtype and t.shape == ours[name].shape, name
        if fmt == "gptq":
            assert t.tobytes() == ours[name].tobytes(), name
        else:
            assert np.array_equal(round_to(t.astype(np.float32), "bfloat16"), ours[name].astype(np.float32)), name
