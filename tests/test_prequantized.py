"""Pre-quantized checkpoints as input, each written by its format's own library (or, for the DeepSeek/Qwen
`weight_scale_inv` layout, by hand as transformers' FP8 loader reads it):

- compressed-tensors 0.20 W4A16 with llm-compressor's default `actorder: "static"` (no g_idx stored);
- compressed-tensors 0.12 W4A16 with `actorder: "group"` (a real `weight_g_idx`; 0.20 dropped it);
- compressed-tensors 0.20 FP8: per-tensor weights with a static `input_scale`, per-channel with dynamic
  activations;
- `quant_method: fp8` with 128x128 `weight_scale_inv` blocks;
- GPTQ v1 with desc_act and a permuted g_idx, read by GPTQModel;
- bitsandbytes 0.50 (CPU backend) through transformers: NF4 with nested absmax, FP4, LLM.int8.

Our dequantized weights must equal (float32 bits) what the library / transformers loads; the converted
GGUF must run in llama.cpp; where llama.cpp's converter fails on the same checkpoint, the test asserts it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from reference import (
    REPO,
    cache_root,
    convert_with_llamacpp,
    reference_missing,
    require_module,
    tool,
    tool_env,
)
from spm_fixture import VOCAB_SIZE, add_spm_tokenizer

from quantcli.engine import convert_model
from quantcli.errors import InputInvalid, Unsupported
from quantcli.loaders import open_checkpoint
from quantcli.loaders.packed import PackedCheckpoint
from quantcli.quants.packed import Scheme, detect_format, get_format

pytestmark = pytest.mark.slow
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]
NAMES = [f"model.layers.{i}.{m}.weight" for i in range(2) for m in MODULES]
PROMPT = [[1, 17, 42, 99, 255, 3, 77, 500]]


def _llama():  # noqa: ANN202  (a transformers model; torch is imported lazily)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB_SIZE, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


def _ct_checkpoint(directory: Path, preset: str, actorder: str | None = None) -> Path:
    """A checkpoint written by compressed-tensors' own ModelCompressor (min-max scales, no calibration)."""
    torch = require_module("torch")
    require_module("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    model = _llama()
    scheme = preset_name_to_scheme(preset.removesuffix("_STATIC_INPUT"), ["Linear"])
    if preset.endswith("_STATIC_INPUT"):  # per-channel weights with FP8's static per-tensor input scale
        scheme.input_activations = preset_name_to_scheme("FP8", ["Linear"]).input_activations
    if actorder is not None:
        scheme.weights = scheme.weights.model_copy(update={"actorder": actorder})
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    for module in model.modules():
        if not hasattr(module, "weight_scale"):
            continue
        args, w = module.quantization_scheme.weights, module.weight.data
        if args.strategy == "group":
            lo = w.reshape(w.shape[0], -1, args.group_size).amin(-1)
            hi = w.reshape(w.shape[0], -1, args.group_size).amax(-1)
        elif args.strategy == "channel":
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        else:
            lo, hi = w.amin().reshape(1), w.amax().reshape(1)
        scale, zero = calculate_qparams(lo, hi, args)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        if hasattr(module, "weight_zero_point"):
            module.weight_zero_point.data.copy_(zero.reshape(module.weight_zero_point.shape))
        if hasattr(module, "input_scale"):  # static activation scale (the FP8 preset)
            module.input_scale.data.copy_(torch.tensor([0.0123]))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)
    add_spm_tokenizer(directory)
    return directory


def _transformers_weights(directory: Path) -> dict[str, np.ndarray]:
    """The Linear weights transformers holds after loading (compressed-tensors decompresses on the first
    forward), as float32."""
    torch = require_module("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    with torch.no_grad():
        model(torch.tensor(PROMPT))
    return {n: model.get_submodule(n.removesuffix(".weight")).weight.detach().float().numpy() for n in NAMES}


def _assert_ours_equal(directory: Path, ref: dict[str, np.ndarray]) -> PackedCheckpoint:
    ckpt = open_checkpoint(directory)
    assert isinstance(ckpt, PackedCheckpoint)
    for name in NAMES:
        assert ckpt.tensor_info(name).shape == ref[name].shape
        assert np.array_equal(np.asarray(ckpt.read(name), dtype=np.float32), ref[name]), name
    return ckpt


def _tensors(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(path).tensors}


def _converts_and_runs(directory: Path, tmp_path: Path) -> Path:
    """quantcli converts the checkpoint (BF16, the model dtype) and llama.cpp generates from the file."""
    out = tmp_path / "ours.gguf"
    result = convert_model(directory, out, out_type="bf16")
    assert result["n_tensors"] == 2 * 9 + 2
    proc = subprocess.run([str(tool("llama-simple")), "-m", str(out), "-n", "8", "hello world"],
                          capture_output=True, text=True, env=tool_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hello world" in proc.stdout and proc.stdout.split("hello world", 1)[1].strip(), proc.stdout  # generated
    return out


def _llamacpp_same_tensors(directory: Path, ours: Path, tmp_path: Path) -> None:
    """llama.cpp's converter reads the checkpoint too, to the same tensor bytes."""
    ref = tmp_path / "llamacpp.gguf"
    proc = convert_with_llamacpp(directory, ref, "bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _tensors(ours), _tensors(ref)
    assert sorted(a) == sorted(b) and all(a[n] == b[n] for n in a)


def _llamacpp_fails(directory: Path, tmp_path: Path, needle: str) -> None:
    proc = convert_with_llamacpp(directory, tmp_path / "llamacpp.gguf", "bf16")
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr[-3000:]


def test_ct_w4a16_static_actorder_no_g_idx(tmp_path: Path) -> None:
    """llm-compressor's default GPTQ output: `actorder: "static"`, contiguous groups, no g_idx stored."""
    ckpt_dir = _ct_checkpoint(tmp_path / "ct", "W4A16", actorder="static")
    config = json.loads((ckpt_dir / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] == "static"
    ckpt = _assert_ours_equal(ckpt_dir, _transformers_weights(ckpt_dir))
    assert ckpt.scheme == Scheme(4, 128, "bfloat16")
    ours = _converts_and_runs(ckpt_dir, tmp_path)
    _llamacpp_same_tensors(ckpt_dir, ours, tmp_path)


def _legacy_ct() -> Path:
    """compressed-tensors 0.12, installed apart (`make install-clients`) so that the suite keeps 0.20."""
    path = cache_root() / "compressed-tensors-0.12.2"
    if not (path / "compressed_tensors").is_dir():
        reference_missing(f"compressed-tensors 0.12.2 not installed in {path} (make install-clients)")
    return path


def test_ct_group_actorder_with_g_idx(tmp_path: Path) -> None:
    """`actorder: "group"`: columns grouped by `weight_g_idx`, dequantized exactly as compressed-tensors
    0.12 does (the last release that reads it); llama.cpp's converter cannot map `weight_g_idx`."""
    require_module("torch")
    ckpt_dir, weights = tmp_path / "ct-gidx", tmp_path / "ct012-weights.safetensors"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "ct_legacy_gidx.py"), str(ckpt_dir), str(weights)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(_legacy_ct())))
    assert proc.returncode == 0, proc.stderr[-3000:]
    add_spm_tokenizer(ckpt_dir)
    from safetensors.numpy import load_file

    ref = load_file(weights)
    ckpt = _assert_ours_equal(ckpt_dir, ref)
    # the g_idx matters: reading the same tensors as contiguous groups gives other weights
    module = "model.layers.0.mlp.down_proj"
    parts = {s: ckpt.inner.read(f"{module}.{s}") for s in ("weight_packed", "weight_scale", "weight_shape")}
    contiguous = get_format("ct").dequantize(parts, ckpt.scheme)
    assert not np.array_equal(contiguous, ref[f"{module}.weight"])
    _converts_and_runs(ckpt_dir, tmp_path)
    _llamacpp_fails(ckpt_dir, tmp_path, "weight_g_idx")


@pytest.mark.parametrize(
    ("preset", "llamacpp_error"),
    [
        ("FP8", 'strategy == "channel"'),  # per-tensor weight scale: the converter asserts channel/block
        ("FP8_DYNAMIC_STATIC_INPUT", "input_scale"),  # llama.cpp issue 22346: input_scale has no GGUF name
        ("FP8_DYNAMIC", None),
    ],
)
def test_ct_fp8(tmp_path: Path, preset: str, llamacpp_error: str | None) -> None:
    """FP8 (per-tensor weight scale, static per-tensor input_scale), per-channel weight scales with a static
    input_scale, FP8_DYNAMIC (per-channel, dynamic activations). The activation quantization is not part of
    the weights: dropped (formats/packed-safetensors.md)."""
    ckpt_dir = _ct_checkpoint(tmp_path / preset, preset)
    has_input_scale = "input_scale" in (ckpt_dir / "model.safetensors").read_bytes()[:100_000].decode("latin-1")
    assert has_input_scale == (preset != "FP8_DYNAMIC")
    ckpt = _assert_ours_equal(ckpt_dir, _transformers_weights(ckpt_dir))
    assert ckpt.fmt.name == "ct-fp8" and ckpt.scheme == Scheme(8, 0, "bfloat16")
    ours = _converts_and_runs(ckpt_dir, tmp_path)
    if llamacpp_error is not None:
        _llamacpp_fails(ckpt_dir, tmp_path, llamacpp_error)
    else:
        _llamacpp_same_tensors(ckpt_dir, ours, tmp_path)


def _fp8_block_checkpoint(directory: Path) -> Path:
    """The DeepSeek-V3 / Qwen3-FP8 layout: e4m3 weights, a float32 `weight_scale_inv` per 128x128 block
    (the value transformers and DeepSeek's weight_dequant multiply by), `quant_method: fp8`."""
    torch = require_module("torch")
    from safetensors.torch import save_file

    model = _llama()
    model.save_pretrained(directory)
    state = {n: p.detach().clone() for n, p in model.state_dict().items() if n != "lm_head.weight"}
    gen = torch.Generator().manual_seed(3)
    for name in NAMES:
        w = state[name].float()
        rows, cols = w.shape
        blocks = w.reshape(rows // 128, 128, cols // 128, 128).abs().amax(dim=(1, 3))
        # per-block scales spread over a few binades so that the float32 products really round
        scale = (blocks / 448.0) * torch.exp2(torch.randint(-2, 3, blocks.shape, generator=gen).float() / 3)
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
        state[name] = (w / full).clamp(-448, 448).to(torch.float8_e4m3fn)
        state[name.removesuffix("weight") + "weight_scale_inv"] = scale.float()
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    add_spm_tokenizer(directory)
    return directory


def test_fp8_weight_scale_inv_blocks(tmp_path: Path) -> None:
    ckpt_dir = _fp8_block_checkpoint(tmp_path / "fp8")
    # transformers on CPU dequantizes FP8 at load (Fp8Dequantize): float32 product, cast to the model dtype
    ckpt = _assert_ours_equal(ckpt_dir, _transformers_weights(ckpt_dir))
    assert ckpt.fmt.name == "fp8" and ckpt.scheme == Scheme(8, 0, "bfloat16", (128, 128))
    ours = _converts_and_runs(ckpt_dir, tmp_path)
    _llamacpp_same_tensors(ckpt_dir, ours, tmp_path)


def test_gptq_desc_act_g_idx_in_gptqmodel(tmp_path: Path) -> None:
    """GPTQ v1 with desc_act=true: each column's group is its g_idx entry (GPTQModel's dequantize_weight)."""
    torch = require_module("torch")
    require_module("gptqmodel")
    from tiny_models import make_tiny_llama
    from transformers import AutoModelForCausalLM

    from quantcli.writers.packed import write_packed
    from quantcli.writers.safetensors import write_file

    scheme = Scheme(4, 64, "float16")
    out = tmp_path / "gptq"
    write_packed(open_checkpoint(make_tiny_llama(tmp_path / "src", layers=2)), out, get_format("gptq"), scheme)
    # The same packed values with their columns assigned to groups by a permutation (act-order's layout).
    stored = open_checkpoint(out, dequantize_packed=False)
    tensors = {n: np.array(stored.read(n)) for n in stored.tensor_names()}
    rng = np.random.default_rng(5)
    for name in [n for n in tensors if n.endswith(".g_idx")]:
        n = tensors[name].size
        g_idx = np.empty(n, dtype=np.int32)
        g_idx[rng.permutation(n)] = np.arange(n, dtype=np.int32) // scheme.group_size
        tensors[name] = g_idx
    stored.close()
    for f in out.glob("*.safetensors"):
        f.unlink()
    write_file(out / "model.safetensors", tensors, {"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["desc_act"] = True
    (out / "config.json").write_text(json.dumps(config, indent=2))

    ckpt = open_checkpoint(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cpu")
    with torch.no_grad():
        for name in NAMES:
            client = model.get_submodule(name.removesuffix(".weight")).dequantize_weight().float().numpy().T
            assert np.array_equal(np.asarray(ckpt.read(name), dtype=np.float32), client), name


def _bnb_checkpoint(directory: Path, **options: object) -> Path:
    """A checkpoint quantized by bitsandbytes itself (its CPU backend) as transformers loads a bf16 model with
    `BitsAndBytesConfig(**options)`, then `save_pretrained`."""
    torch = require_module("torch")
    require_module("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    source = directory.with_name(directory.name + "-src")
    _llama().save_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=BitsAndBytesConfig(**options),
                                                 dtype=torch.bfloat16, device_map="cpu")
    model.save_pretrained(directory)
    add_spm_tokenizer(directory)
    return directory


def _bits(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns: equality that tells -0 from +0."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _bnb_reference(directory: Path, ckpt: PackedCheckpoint) -> None:
    """Ours equals (float32 bits) transformers' dequantized model and bitsandbytes' own dequantize functions
    on the stored tensors, in the model dtype and, with the quant state's dtype set to float32, before any
    rounding."""
    torch = require_module("torch")
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
    model.dequantize()  # transformers' dense weights: bnb's dequantization cast to the model dtype
    fmt, f32 = ckpt.fmt, Scheme(ckpt.scheme.bits, 0, "float32")
    for name in NAMES:
        ours = np.asarray(ckpt.read(name), dtype=np.float32)
        dense = model.get_submodule(name.removesuffix(".weight")).weight.detach()
        assert dense.dtype == torch.bfloat16 and np.array_equal(_bits(dense.float().numpy()), _bits(ours)), name
        module = name.removesuffix(".weight")
        parts = {n.removeprefix(module + "."): np.array(ckpt.inner.read(n)) for n in ckpt._modules[name]}
        if fmt.name == "bnb-int8":
            ref = bnbf.int8_vectorwise_dequant(torch.from_numpy(parts["weight"]), torch.from_numpy(parts["SCB"]))
            assert np.array_equal(_bits(fmt.dequantize(parts, f32)), _bits(ref.numpy())), name
            continue
        (blob_name,) = [k for k in parts if "quant_state" in k]
        state = json.loads(parts[blob_name].tobytes())
        for dtype in ("bfloat16", "float32"):
            blob = np.frombuffer(json.dumps({**state, "dtype": dtype}).encode(), dtype=np.uint8)
            qs = bnbf.QuantState.from_dict(
                {**{k: torch.from_numpy(v) for k, v in parts.items() if k != "weight"},
                 blob_name: torch.from_numpy(blob.copy())}, device=torch.device("cpu"))
            packed = torch.from_numpy(parts["weight"].view(np.uint8))  # any storage dtype is read as bytes
            ref = bnbf.dequantize_4bit(packed, qs).float().numpy()
            got = fmt.dequantize({**parts, blob_name: blob}, Scheme(4, 0, dtype))
            assert np.array_equal(_bits(got), _bits(ref)), (name, dtype)


@pytest.mark.parametrize(
    ("options", "fmt_name"),
    [
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
          "bnb_4bit_compute_dtype": "bfloat16"}, "bnb-4bit"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "bnb-4bit"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_quant_storage": "bfloat16"}, "bnb-4bit"),
        ({"load_in_8bit": True}, "bnb-int8"),
    ],
    ids=["nf4-double-quant", "fp4", "nf4-bf16-storage", "int8"],
)
def test_bitsandbytes(tmp_path: Path, options: dict[str, object], fmt_name: str) -> None:
    """bitsandbytes checkpoints, dequantized bit for bit as bitsandbytes does; the GGUF runs in llama.cpp,
    whose converter refuses the checkpoint (`quant_method` bitsandbytes is not supported)."""
    ckpt_dir = _bnb_checkpoint(tmp_path / "bnb", **options)
    from safetensors import safe_open

    with safe_open(ckpt_dir / "model.safetensors", "np") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    module = "model.layers.0.mlp.up_proj"
    if fmt_name == "bnb-int8":
        assert stored[f"{module}.weight"] == "I8" and stored[f"{module}.SCB"] == "F32"
    else:
        assert stored[f"{module}.weight"] == ("BF16" if "bnb_4bit_quant_storage" in options else "U8")
        assert (f"{module}.weight.nested_absmax" in stored) == bool(options.get("bnb_4bit_use_double_quant"))
    ckpt = open_checkpoint(ckpt_dir)
    assert isinstance(ckpt, PackedCheckpoint) and ckpt.fmt.name == fmt_name
    assert ckpt.scheme.dtype == "bfloat16" and sorted(n for n in ckpt.tensor_names() if "proj" in n) == sorted(NAMES)
    _bnb_reference(ckpt_dir, ckpt)
    _converts_and_runs(ckpt_dir, tmp_path)
    _llamacpp_fails(ckpt_dir, tmp_path, "Quant method is not yet supported: 'bitsandbytes'")


def test_refusals() -> None:
    """What cannot be read exactly is refused in one line (exit 5); malformed tensors are exit 4."""
    ct = get_format("ct").config(Scheme(4, 128), ["lm_head"])
    ct["quantization_config"]["transform_config"] = {"config_groups": {"u": {"type": "hadamard"}}}
    with pytest.raises(Unsupported, match="transform_config"):
        detect_format(ct)
    ct = get_format("ct").config(Scheme(4, 128), ["lm_head"])
    ct["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 3
    with pytest.raises(Unsupported, match="3-bit"):
        detect_format(ct)
    fp8 = {"quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}}
    with pytest.raises(Unsupported, match="e4m3"):
        detect_format(fp8)
    with pytest.raises(Unsupported, match="unknown --format 'fp8'"):
        get_format("fp8")

    # a g_idx whose groups are not all group_size wide: compressed-tensors' sorted-runs reading differs
    fmt, scheme = get_format("ct"), Scheme(4, 32, "bfloat16")
    parts = fmt.quantize(np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32), scheme)
    with pytest.raises(Unsupported, match="group_size|32 columns"):
        fmt.dequantize({**parts, "weight_g_idx": np.array([0] * 40 + [1] * 24, dtype=np.int32)}, scheme)
    with pytest.raises(InputInvalid, match="g_idx values"):
        fmt.dequantize({**parts, "weight_g_idx": np.array([0] * 32 + [2] * 32, dtype=np.int32)}, scheme)
