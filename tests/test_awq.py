"""AWQ (quantcli/quants/awq.py): the scale search and clip search against mlx-lm's own (`mlx_lm.quant.awq`) on
one decoder layer, given the same inputs; folding; the `awq` fake quantizer.

mlx-lm runs its whole `awq_quantize` on a one-layer float32 Llama; every `search_best_scale` /
`search_best_clip` call is recorded with its inputs (the linears' captured input features, the float
weights of the block at that moment) and ours is run on exactly those, with a NumPy forward of the block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import require_module

from quantcli.quants.awq import (
    activation_mean,
    awq_search,
    clip_search,
    fold_into_linear,
    fold_into_norm,
    ggml_fake_quantizer,
    linear_outputs,
    llama_scaling_groups,
    packed_fake_quantizer,
    ratio_scales,
    scale_columns,
)
from quantcli.quants.packed import Scheme, get_format

BITS = 4


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    kv_heads: int
    rope_base: float
    group: int  # the quantization group of the comparison

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


TINY = Dims(hidden=128, heads=4, kv_heads=2, rope_base=10000.0, group=32)
TINY_FF = 256


# ----------------------------------------------------------------------------------------------------------
# The decoder layer's blocks in NumPy (mlx-lm's llama.py: non-traditional RoPE, causal GQA attention, SwiGLU)


def _rope(x: np.ndarray, dims: Dims) -> np.ndarray:
    """(B, H, L, D), rotating halves (rope_traditional=False)."""
    half = dims.head_dim // 2
    freqs = dims.rope_base ** (-np.arange(half, dtype=np.float64) * 2 / dims.head_dim)
    angles = np.arange(x.shape[2])[:, None] * freqs[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _heads(y: np.ndarray, n: int, dims: Dims) -> np.ndarray:
    b, length, _ = y.shape
    return y.reshape(b, length, n, dims.head_dim).transpose(0, 2, 1, 3)


def attention_block(x: np.ndarray, qkv: Sequence[np.ndarray], o_proj: np.ndarray, dims: Dims) -> np.ndarray:
    q, k, v = (x @ w.T for w in qkv)
    q, k = _rope(_heads(q, dims.heads, dims), dims), _rope(_heads(k, dims.kv_heads, dims), dims)
    v = _heads(v, dims.kv_heads, dims)
    repeat = dims.heads // dims.kv_heads
    k, v = np.repeat(k, repeat, axis=1), np.repeat(v, repeat, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) * np.float32(dims.head_dim**-0.5)
    length = x.shape[1]
    scores = np.where(np.tril(np.ones((length, length), dtype=bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], length, dims.heads * dims.head_dim)
    return out @ o_proj.T


def mlp_block(x: np.ndarray, gate_up: Sequence[np.ndarray], down: np.ndarray) -> np.ndarray:
    g, u = (x @ w.T for w in gate_up)
    return (g / (1 + np.exp(-g)) * u) @ down.T


# ----------------------------------------------------------------------------------------------------------
# mlx-lm's AWQ on one layer, recorded


def _tiny_mlx_layer() -> tuple[Any, np.ndarray]:
    """A one-layer float32 Llama in mlx-lm with activation outliers (a few input channels of each norm ×8),
    and calibration tokens."""
    mx = require_module("mlx.core")
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models.llama import Model, ModelArgs

    args = ModelArgs(model_type="llama", hidden_size=TINY.hidden, num_hidden_layers=1, intermediate_size=TINY_FF,
                     num_attention_heads=TINY.heads, num_key_value_heads=TINY.kv_heads, rms_norm_eps=1e-5,
                     vocab_size=256)
    model = Model(args)
    rng = np.random.default_rng(0)
    params = {}
    for name, value in tree_flatten(model.parameters()):
        shape = value.shape
        if name.endswith("layernorm.weight"):
            w = 1 + 0.1 * rng.standard_normal(shape)
            w[rng.choice(TINY.hidden, 6, replace=False)] *= 8  # the salient channels AWQ protects
        else:
            w = rng.standard_normal(shape) * (1.0 if "embed" in name else 0.05)
        params[name] = mx.array(w.astype(np.float32))
    model.update(tree_unflatten(list(params.items())))
    tokens = rng.integers(0, 256, size=(4, 32))
    return model, tokens


def _numpy(a: Any) -> np.ndarray:
    return np.array(a, dtype=np.float32)


def run_mlx_awq(model: Any, tokens: np.ndarray, dims: Dims) -> dict[str, list[dict[str, Any]]]:
    """Run mlx-lm's awq_quantize (4-bit, n_grid 20) on a one-layer model; record every search."""
    mx = require_module("mlx.core")
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.quant import awq

    layer = model.model.layers[0]
    scale_calls: list[dict[str, Any]] = []
    clip_calls: list[dict[str, Any]] = []
    original_scale, original_clip = awq.search_best_scale, awq.search_best_clip

    def search_best_scale(layers: list, quantize_func: Any, block: Any, layer_kwargs: dict, n_grid: int) -> Any:
        names = {id(m): n for n, m in layer.named_modules()}
        record = {
            "linears": [names[id(m)] for m in layers],
            "x": _numpy(layers[0].input_feat),
            "params": {n: _numpy(v) for n, v in tree_flatten(layer.parameters())},
        }
        scales = original_scale(layers, quantize_func, block, layer_kwargs, n_grid)
        record["scales"] = _numpy(scales)
        x_max = layers[0].input_feat.abs().mean(axis=(0, 1))
        candidates = [mx.maximum(x_max ** (r / n_grid), 1e-4) for r in range(n_grid)]
        candidates = [_numpy(c / (c.max() * c.min()).sqrt()) for c in candidates]
        record["ratio"] = [r / n_grid for r, c in enumerate(candidates) if np.array_equal(c, record["scales"])]
        scale_calls.append(record)
        return scales

    def search_best_clip(module: Any, quantize_func: Any, group_size: int, n_grid: int, **kw: Any) -> Any:
        record = {"x": _numpy(module.input_feat), "weight": _numpy(module.weight)}
        best = original_clip(module, quantize_func=quantize_func, group_size=group_size, n_grid=n_grid, **kw)
        record["clipped"] = _numpy(best)
        clip_calls.append(record)
        return best

    awq.search_best_scale, awq.search_best_clip = search_best_scale, search_best_clip
    try:
        awq.awq_quantize(model, mx.array(tokens), awq.llama_awq, group_size=dims.group, bits=BITS, n_grid=20)
    finally:
        awq.search_best_scale, awq.search_best_clip = original_scale, original_clip
    assert isinstance(layer.self_attn.q_proj, nn.QuantizedLinear)
    return {"scale": scale_calls, "clip": clip_calls}


@pytest.fixture(scope="module")
def mlx_run() -> dict[str, list[dict[str, Any]]]:
    return run_mlx_awq(*_tiny_mlx_layer(), TINY)


def mlx_fake_quantizer(group: int) -> Any:
    """mlx-lm's quantize_func (mx.quantize + mx.dequantize, affine) as a NumPy callable."""
    mx = require_module("mlx.core")

    def quantize_dequantize(w: np.ndarray) -> np.ndarray:
        wq = mx.quantize(mx.array(w), bits=BITS, group_size=group)
        return _numpy(mx.dequantize(*wq, bits=BITS, group_size=group))

    return quantize_dequantize


def _forward_for(record: dict[str, Any], dims: Dims) -> Any:
    """Our block forward for a recorded search: the block's other weights as they were at that moment."""
    p = record["params"]
    linears = record["linears"]
    if linears[0].startswith("self_attn"):
        return lambda x, ws: attention_block(x, ws, p["self_attn.o_proj.weight"], dims)
    if linears[0] == "mlp.gate_proj":
        return lambda x, ws: mlp_block(x, ws, p["mlp.down_proj.weight"])
    return None  # one linear scaled against the one before it: its own output


def check_scale_searches(run: dict[str, list[dict[str, Any]]], dims: Dims) -> list[float]:
    """Ours on every recorded search: the same ratio, the same scales within float noise. Returns the ratios."""
    calls = run["scale"]
    # mlx-lm's llama order; with GQA there is no v_proj -> o_proj group
    assert [tuple(c["linears"]) for c in calls] == [g.linears for g in llama_scaling_groups(dims.heads, dims.kv_heads)]
    qdq = mlx_fake_quantizer(dims.group)
    ratios = []
    for call in calls:
        weights = [call["params"][f"{name}.weight"] for name in call["linears"]]
        ours = awq_search(call["x"], weights, qdq, _forward_for(call, dims), n_grid=20)
        assert len(call["ratio"]) == 1  # mlx-lm's scales are exactly one grid candidate
        assert ours.ratio == call["ratio"][0], (call["linears"], ours.losses)
        np.testing.assert_allclose(ours.scales, call["scales"], rtol=1e-5)
        ratios.append(ours.ratio)
    return ratios


def check_clip_searches(run: dict[str, list[dict[str, Any]]], dims: Dims) -> None:
    calls = run["clip"]
    assert len(calls) == 5  # v, o, gate, up, down: q/k are never clipped
    qdq = mlx_fake_quantizer(dims.group)
    for call in calls:
        ours = clip_search(call["x"], call["weight"], qdq, dims.group, n_grid=20)
        np.testing.assert_allclose(ours, call["clipped"], rtol=1e-6, atol=0)
    assert any(not np.array_equal(c["clipped"], c["weight"]) for c in calls)  # some group really was clipped


@pytest.mark.slow  # mlx-lm, the reference
def test_numpy_blocks_equal_mlx_blocks() -> None:
    """The NumPy forward the comparison uses is mlx-lm's block within float32 noise."""
    mx = require_module("mlx.core")
    model, _ = _tiny_mlx_layer()
    layer = model.model.layers[0]
    x = np.random.default_rng(1).standard_normal((2, 16, TINY.hidden)).astype(np.float32)
    p = {n: _numpy(getattr(getattr(layer, n.split(".")[0]), n.split(".")[1]).weight)
         for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    ref_attn = _numpy(layer.self_attn(mx.array(x), mask="causal"))
    ours_attn = attention_block(x, [p["self_attn.q_proj"], p["self_attn.k_proj"], p["self_attn.v_proj"]],
                                p["self_attn.o_proj"], TINY)
    assert np.abs(ours_attn - ref_attn).max() < 1e-5 * np.abs(ref_attn).max()
    ref_mlp = _numpy(layer.mlp(mx.array(x)))
    ours_mlp = mlp_block(x, [p["mlp.gate_proj"], p["mlp.up_proj"]], p["mlp.down_proj"])
    assert np.abs(ours_mlp - ref_mlp).max() < 1e-5 * np.abs(ref_mlp).max()


@pytest.mark.slow  # mlx-lm, the reference
def test_scale_search_equals_mlx_lm(mlx_run: dict[str, list[dict[str, Any]]]) -> None:
    ratios = check_scale_searches(mlx_run, TINY)
    assert any(r > 0 for r in ratios)  # the outlier channels really made a scaled candidate win


@pytest.mark.slow  # mlx-lm, the reference
def test_clip_search_equals_mlx_lm(mlx_run: dict[str, list[dict[str, Any]]]) -> None:
    check_clip_searches(mlx_run, TINY)


@pytest.mark.slow
def test_smollm2_layer0_equals_mlx_lm(smollm2_dir: Path) -> None:
    """The same comparison on SmolLM2-135M's first decoder layer (real weights, float32) and real text."""
    mx = require_module("mlx.core")
    from mlx_lm.utils import load_model
    from tokenizers import Tokenizer

    from quantcli.runtime.textdata import DEFAULT_TEXT

    config = json.loads((smollm2_dir / "config.json").read_text())
    dims = Dims(hidden=config["hidden_size"], heads=config["num_attention_heads"],
                kv_heads=config["num_key_value_heads"], rope_base=float(config["rope_theta"]), group=64)
    model, _ = load_model(smollm2_dir, lazy=True, strict=False, model_config={"num_hidden_layers": 1})
    model.set_dtype(mx.float32)
    ids = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json")).encode(DEFAULT_TEXT.read_text()).ids
    tokens = np.array(ids[: 2 * 64]).reshape(2, 64)
    run = run_mlx_awq(model, tokens, dims)
    check_scale_searches(run, dims)
    check_clip_searches(run, dims)


def test_folding_keeps_the_float_function() -> None:
    """Norm / previous linear divided by s, the linears' columns times s: the float output is unchanged."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 64)).astype(np.float32)
    norm = (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    s = ratio_scales(activation_mean(x) + 0.5, 0.5)
    before = (x * norm) @ w.T
    after = (x * fold_into_norm(norm, s)) @ scale_columns(w, s).T
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    # Gemma's HF (1 + w) norm: (1 + w') = (1 + w) / s
    np.testing.assert_allclose(1 + fold_into_norm(norm, s, offset=1.0), (1 + norm) / s, rtol=1e-6)
    up = rng.standard_normal((64, 48)).astype(np.float32)
    h = rng.standard_normal((10, 48)).astype(np.float32)
    np.testing.assert_allclose((h @ fold_into_linear(up, s).T) @ scale_columns(w, s).T, (h @ up.T) @ w.T,
                               rtol=1e-4, atol=1e-4)


def test_awq_fake_quantizer_lowers_loss_on_salient_channels() -> None:
    """With the awq format's own quantizer, scaling protects the large-activation channels: the chosen
    ratio is positive and its loss is below plain RTN (ratio 0)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    x[:, rng.choice(128, 4, replace=False)] *= 20
    w = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)
    qdq = packed_fake_quantizer(get_format("awq"), Scheme(4, 32, "float16"))
    found = awq_search(x, [w], qdq, n_grid=20)
    assert found.ratio > 0 and found.loss < found.losses[0] * 0.5  # measured: r = 0.40, 0.33x
    assert found.losses[0] == pytest.approx(float(np.mean((linear_outputs(x, [w]) - x @ qdq(w).T) ** 2)), rel=1e-5)


def test_ggml_fake_quantizer_is_the_gguf_bytes() -> None:
    """Q4_K as the search's quantizer: exactly dequantize(quantize(w)), and a search with it runs."""
    from quantcli.quants.base import dequantize, quantize

    rng = np.random.default_rng(6)
    w = (rng.standard_normal((32, 256)) * 0.05).astype(np.float32)
    qdq = ggml_fake_quantizer("Q4_K")
    assert np.array_equal(qdq(w), dequantize(quantize(w, "Q4_K"), "Q4_K", w.shape))
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[:, :3] *= 30
    found = awq_search(x, [w], qdq, n_grid=10)
    assert found.loss <= found.losses[0] and len(found.losses) == 10


def test_search_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="AWQ weights"):
        awq_search(np.zeros((4, 8), np.float32), [np.zeros((2, 6), np.float32)], lambda w: w)


def test_scaling_groups_add_v_to_o_without_gqa() -> None:
    with_gqa = [g.linears for g in llama_scaling_groups(9, 3)]
    without = [(g.prev, g.linears) for g in llama_scaling_groups(8, 8)]
    assert ("self_attn.o_proj",) not in with_gqa and len(with_gqa) == 3
    assert without[1] == ("self_attn.v_proj", ("self_attn.o_proj",))
