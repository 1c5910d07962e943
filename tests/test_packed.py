"""Packed safetensors: bit packing against client-computed golden words, layouts, refusals, read-back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import make_tiny_llama

from quantcli.errors import InputInvalid, Unsupported
from quantcli.loaders import open_checkpoint
from quantcli.quants.packed import Scheme, get_format
from quantcli.quants.packed.bits import pack_rows, unpack_rows
from quantcli.writers.packed import write_packed

GOLDEN = json.loads((Path(__file__).resolve().parent.parent / "formats" / "packed-golden.json").read_text())


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_packing_equals_client_golden_words(key: str) -> None:
    fmt, bits = key.split("/")
    codes = np.array(GOLDEN[key]["codes"])
    words = np.array(GOLDEN[key]["words"], dtype=np.uint64).astype(np.uint32)
    ours = pack_rows(codes, int(bits))
    if fmt == "gptq":  # GPTQ packs along the input dimension: (in*b/32, out)
        ours = ours.T
    assert np.array_equal(ours, words)
    back = unpack_rows(words.T if fmt == "gptq" else words, int(bits), codes.shape[1])
    assert np.array_equal(back, codes)


def test_ct_4bit_known_word() -> None:
    # [1,-2,3,-4,0,1,2,3] offset-binary, LSB first (packed-safetensors.md, run on compressed-tensors 0.20).
    assert pack_rows(np.array([[1, -2, 3, -4, 0, 1, 2, 3]]) + 8, 4)[0, 0] == 0xBA984B69


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip_any_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(3, 4, 200))
    words = pack_rows(codes, bits)
    assert words.shape == (3, 4, -(-200 * bits // 32))
    assert np.array_equal(unpack_rows(words, bits, 200), codes)


@pytest.mark.parametrize(
    ("fmt", "bits", "dtype", "max_rel_err"),
    [("ct", 8, "bfloat16", 0.02), ("ct", 4, "bfloat16", 0.15), ("mlx", 4, "bfloat16", 0.12),
     ("mlx", 3, "bfloat16", 0.25), ("gptq", 4, "float16", 0.15), ("gptq", 8, "float16", 0.02),
     ("awq", 4, "float16", 0.12)],
)
def test_quantize_layout_and_error(fmt: str, bits: int, dtype: str, max_rel_err: float) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 256)).astype(np.float32) * 0.02
    f, scheme = get_format(fmt), Scheme(bits, 64, dtype)
    tensors = f.quantize(w, scheme)
    layout = f.layout(96, 256, scheme)
    assert {k: (v.dtype, v.shape) for k, v in tensors.items()} == layout
    deq = f.dequantize(tensors, scheme)
    rel = np.abs(deq - w).mean() / np.abs(w).mean()
    assert rel < max_rel_err
    assert rel > 0  # it really quantized


@pytest.mark.parametrize(
    ("fmt", "bits", "group", "message"),
    [("ct", 3, 128, "--bits"), ("ct", 5, 64, "--bits"), ("gptq", 2, 128, "--bits"), ("mlx", 4, 48, "--group-size"),
     ("awq", 8, 128, "--bits"), ("awq", 4, 16, "--group-size"),
     ("mlx", 7, 64, "--bits")],
)
def test_unsupported_combinations_refused(fmt: str, bits: int, group: int, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        get_format(fmt).check(Scheme(bits, group))


def test_group_must_divide_rows(tmp_path: Path) -> None:
    src = make_tiny_llama(tmp_path / "src", hidden=192, heads=3, kv_heads=1, ff=320)
    with pytest.raises(Unsupported, match="does not divide"):
        write_packed(open_checkpoint(src), tmp_path / "out", get_format("ct"), Scheme(4, 128))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_awq_known_words() -> None:
    """AutoAWQ's nibble order: word nibble i holds output column AWQ_ORDER[i] = [0, 2, 4, 6, 1, 3, 5, 7]."""
    from quantcli.quants.packed.awq import pack_awq, unpack_awq

    codes = np.arange(16).reshape(1, 16) % 16
    words = pack_awq(codes).view(np.uint32)
    assert [hex(int(w)) for w in words[0]] == ["0x75316420", "0xfdb9eca8"]
    assert np.array_equal(unpack_awq(words.view(np.int32), 16), codes)


def test_awq_quantize_is_autoawq_zero_point_grid() -> None:
    """scale = (max - min) / 15 in float16, zero = -round(min / scale), q = round(w / scale) + zero; the
    group's min and max read back within half a step, and every stored zero fits 4 bits."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((16, 64)) * 0.05 + 0.01).astype(np.float32)
    f, scheme = get_format("awq"), Scheme(4, 32, "float16")
    tensors = f.quantize(w, scheme)
    scales = tensors["scales"].astype(np.float32)  # (in / group, out)
    g = w.reshape(16, 2, 32)
    expected = ((g.max(-1) - g.min(-1)) / 15).astype(np.float16).astype(np.float32)
    assert np.array_equal(scales, expected.T)
    deq = f.dequantize(tensors, scheme).reshape(16, 2, 32)
    assert np.all(np.abs(deq - g).max(-1) <= scales.T * 0.5 + 1e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"version": "gemv"}, "version"), ({"zero_point": False}, "zero_point"), ({"bits": "4"}, "bits")],
)
def test_awq_config_refusals(change: dict, message: str) -> None:
    config = get_format("awq").config(Scheme(4, 128, "float16"), ["lm_head"])
    config["quantization_config"].update(change)
    with pytest.raises((Unsupported, InputInvalid), match=message):
        get_format("awq").scheme_from_config(config)


def test_asymmetric_ct_checkpoint_refused() -> None:
    config = get_format("ct").config(Scheme(4, 128), ["lm_head"])
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = False
    with pytest.raises(Unsupported, match="symmetric"):
        get_format("ct").scheme_from_config(config)


@pytest.mark.parametrize(("fmt", "bits"), [("ct", 4), ("mlx", 4), ("gptq", 8), ("awq", 4)])
def test_write_packed_checkpoint(tmp_path: Path, fmt: str, bits: int) -> None:
    src = make_tiny_llama(tmp_path / "src")
    (src / "tokenizer_config.json").write_text("{}\n")
    before = (src / "model.safetensors").read_bytes()
    scheme = Scheme(bits, 64, "float16" if fmt in ("gptq", "awq") else "bfloat16")
    result = write_packed(open_checkpoint(src), tmp_path / "out", get_format(fmt), scheme, max_shard_size=300_000)
    out = tmp_path / "out"
    assert (src / "model.safetensors").read_bytes() == before
    assert (out / "tokenizer_config.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(p.name for p in out.glob("model-*.safetensors"))
    assert result["tensors"] == {"quantized": 14, "kept": 6}
    ckpt = open_checkpoint(out, dequantize_packed=False)
    names = set(ckpt.tensor_names())
    assert "model.layers.0.self_attn.q_proj.weight" not in names or fmt == "mlx"
    f = get_format(fmt)
    assert f.scheme_from_config(ckpt.config) == scheme
    module = "model.layers.1.mlp.down_proj"
    suffixes = f.layout(256, 512, scheme)
    tensors = {s: ckpt.read(f"{module}.{s}") for s in suffixes}
    src_w = np.asarray(open_checkpoint(src).read(f"{module}.weight"), dtype=np.float32)
    deq = f.dequantize(tensors, scheme)
    assert deq.shape == src_w.shape
    assert np.abs(deq - src_w).max() < np.abs(src_w).max() * (0.2 if bits == 4 else 0.02)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quantcli-tmp")]


def test_convert_format_awq_runs_in_float16(tmp_path: Path) -> None:
    """`convert --format awq` (RTN) on a bfloat16 model: float16 scales, kept tensors and torch_dtype — the
    dtype AWQ clients run in — and 8-bit is refused before anything is written."""
    from quantcli.engine import convert_model

    src = make_tiny_llama(tmp_path / "src")
    result = convert_model(src, tmp_path / "awq", format="awq", bits=4)
    assert (result["format"], result["dtype"], result["group_size"]) == ("awq", "float16", 128)
    ckpt = open_checkpoint(tmp_path / "awq", dequantize_packed=False)
    assert ckpt.config["torch_dtype"] == "float16"
    assert get_format("awq").scheme_from_config(ckpt.config) == Scheme(4, 128, "float16")
    assert ckpt.tensor_info("model.norm.weight").dtype == "F16"
    with pytest.raises(Unsupported, match="--bits 4"):
        convert_model(src, tmp_path / "awq8", format="awq", bits=8)
    assert not (tmp_path / "awq8").exists()
