"""bitsandbytes checkpoints through the CLI, without bitsandbytes (fast): a tiny llama whose Linears are
stored as bitsandbytes lays them out, converted to GGUF; and what is refused, in one line with the
documented exit code and nothing written. Bit-equality with bitsandbytes itself and transformers is
tests/test_prequantized.py::test_bitsandbytes; hostile files are tests/test_fuzz_parsers.py::test_bnb_layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from badinputs import run_cli_in_process
from spm_fixture import add_spm_tokenizer
from tiny_models import make_tiny_llama

from quantcli.errors import ExitCode
from quantcli.loaders import open_checkpoint
from quantcli.loaders.packed import PackedCheckpoint
from quantcli.quants.packed.base import round_to
from quantcli.quants.packed.bnb import CODES, INT8_RECIPROCAL
from quantcli.writers.safetensors import write_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _nearest_codes(weight: np.ndarray, quant_type: str, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """4-bit codes and float32 block absmax of `weight` (nearest code, not bitsandbytes' exact rounding:
    only reading is under test)."""
    flat = weight.reshape(-1)
    blocks = -(-flat.size // blocksize)
    padded = np.zeros(blocks * blocksize, dtype=np.float32)
    padded[: flat.size] = flat
    absmax = np.maximum(np.abs(padded.reshape(blocks, blocksize)).max(axis=1), 1e-8).astype(np.float32)
    scaled = padded / np.repeat(absmax, blocksize)
    codes = np.abs(scaled[: flat.size, None] - CODES[quant_type][None, :]).argmin(axis=1).astype(np.uint8)
    return codes, absmax


def bnb_llama(directory: Path, kind: str, nested: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny llama with its Linears in bitsandbytes' layout (`kind`: nf4, fp4 or int8), and the weights they
    dequantize to (float32 values of the bf16 model)."""
    make_tiny_llama(directory, hidden=64, ff=128, layers=1)
    ckpt = open_checkpoint(directory)
    tensors = {n: np.asarray(ckpt.read(n)) for n in ckpt.tensor_names()}
    ckpt.close()
    expected = {}
    for name in [n for n in list(tensors) if n.rsplit(".", 2)[-2] in LINEARS]:
        w = tensors.pop(name).astype(np.float32)
        module = name.removesuffix(".weight")
        if kind == "int8":
            scb = np.abs(w).max(axis=1).astype(np.float32)
            q = np.round(w * 127 / scb[:, None]).astype(np.int8)
            tensors |= {name: q, f"{module}.SCB": scb}
            expected[name] = round_to(q.astype(np.float32) * scb[:, None] * INT8_RECIPROCAL, "bfloat16")
            continue
        codes, absmax = _nearest_codes(w, kind, 64)
        state: dict[str, object] = {"quant_type": kind, "blocksize": 64, "dtype": "bfloat16", "shape": list(w.shape)}
        values = absmax
        if nested:
            offset = np.float32(absmax.mean())
            code8 = np.linspace(-1, 1, 256, dtype=np.float32)
            nested_absmax = np.array([np.abs(absmax - offset).max()], dtype=np.float32)
            q8 = np.abs((absmax - offset)[:, None] / nested_absmax[0] - code8[None, :]).argmin(axis=1).astype(np.uint8)
            state |= {"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": float(offset)}
            tensors |= {f"{name}.absmax": q8, f"{name}.nested_absmax": nested_absmax, f"{name}.nested_quant_map": code8}
            values = code8[q8] * nested_absmax[0] + offset
        else:
            tensors[f"{name}.absmax"] = absmax
        tensors |= {
            name: ((codes[0::2] << 4) | codes[1::2]).reshape(-1, 1),
            f"{name}.quant_map": CODES[kind],
            f"{name}.quant_state.bitsandbytes__{kind}": np.frombuffer(json.dumps(state).encode(), np.uint8),
        }
        expected[name] = round_to(CODES[kind][codes] * np.repeat(values, 64)[: w.size], "bfloat16").reshape(w.shape)
    for f in directory.glob("*.safetensors"):
        f.unlink()
    write_file(directory / "model.safetensors", tensors, {"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "bitsandbytes", "load_in_4bit": kind != "int8", "load_in_8bit": kind == "int8",
        "bnb_4bit_quant_type": kind if kind != "int8" else "fp4", "bnb_4bit_use_double_quant": nested,
        "bnb_4bit_compute_dtype": "bfloat16", "llm_int8_threshold": 6.0, "llm_int8_skip_modules": None,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    add_spm_tokenizer(directory)
    return directory, expected


@pytest.mark.parametrize(("kind", "nested"), [("nf4", True), ("fp4", False), ("int8", False)])
def test_convert_bnb(tmp_path: Path, kind: str, nested: bool) -> None:
    model, expected = bnb_llama(tmp_path / "m", kind, nested)
    with open_checkpoint(model) as ckpt:
        assert isinstance(ckpt, PackedCheckpoint) and ckpt.fmt.name == ("bnb-int8" if kind == "int8" else "bnb-4bit")
        for name, weight in expected.items():
            assert ckpt.tensor_info(name).shape == weight.shape
            got = np.asarray(ckpt.read(name), dtype=np.float32)
            assert np.array_equal(got.view(np.uint32), weight.view(np.uint32)), name
    code, _, err = run_cli_in_process(["convert", str(model), "-o", str(tmp_path / "out.gguf"), "--type", "bf16"])
    assert code == 0, err
    assert (tmp_path / "out.gguf").stat().st_size > 0


def _edit_config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] |= changes
    (model / "config.json").write_text(json.dumps(config))


def _edit_tensor(model: Path, name: str, value: np.ndarray) -> None:
    with open_checkpoint(model, dequantize_packed=False) as stored:
        tensors = {n: np.array(stored.read(n)) for n in stored.tensor_names()}
    tensors[name] = value
    write_file(model / "model.safetensors", tensors, {"format": "pt"})


def _blob(state: dict[str, object]) -> np.ndarray:
    return np.frombuffer(json.dumps(state).encode(), np.uint8)


STATE = {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 64]}
Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("kind", "damage", "exit_code", "needle"),
    [
        ("nf4", lambda m: _edit_config(m, bnb_4bit_quant_type="int4"), ExitCode.UNSUPPORTED, "bnb_4bit_quant_type"),
        ("nf4", lambda m: _edit_config(m, load_in_8bit=True), ExitCode.INPUT_INVALID, "exactly one"),
        ("nf4", lambda m: _edit_tensor(m, f"{Q}.weight.quant_state.bitsandbytes__nf4", _blob({**STATE, "blocksize": 48})),
         ExitCode.UNSUPPORTED, "blocksize 48"),
        ("nf4", lambda m: _edit_tensor(m, f"{Q}.weight.quant_state.bitsandbytes__nf4", _blob({**STATE, "dtype": "int8"})),
         ExitCode.UNSUPPORTED, "dtype 'int8'"),
        ("nf4", lambda m: _edit_tensor(m, f"{Q}.weight.quant_state.bitsandbytes__nf4", _blob({**STATE, "shape": [64, 65]})),
         ExitCode.INPUT_INVALID, "bytes, expected"),
        ("nf4", lambda m: _edit_tensor(m, f"{Q}.weight.quant_state.bitsandbytes__nf4", np.frombuffer(b"{x", np.uint8)),
         ExitCode.INPUT_INVALID, "not a JSON object"),
        ("int8", lambda m: _edit_tensor(m, f"{Q}.weight_format", np.array([2], dtype=np.uint8)),
         ExitCode.UNSUPPORTED, "weight_format"),
    ],
    ids=["quant-type", "both-load-flags", "blocksize", "state-dtype", "shape-vs-bytes", "state-not-json",
         "int8-tiled-layout"],
)
def test_refused(tmp_path: Path, kind: str, damage, exit_code: ExitCode, needle: str) -> None:  # noqa: ANN001
    """What cannot be read exactly is exit 5, malformed input exit 4: one line, no output file."""
    model, _ = bnb_llama(tmp_path / "m", kind)
    damage(model)
    out = tmp_path / "out.gguf"
    code, _, err = run_cli_in_process(["convert", str(model), "-o", str(out), "--type", "bf16"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == exit_code and len(lines) == 1 and needle in lines[0], (code, err)
    assert not out.exists()


def test_quant_state_json_limits() -> None:
    """Deep nesting and over-long integers in the blob are malformed input, not a RecursionError/ValueError."""
    from quantcli.errors import InputInvalid
    from quantcli.quants.packed.bnb import parse_quant_state

    for raw in (b"[" * 100_000, b'{"blocksize": ' + b"1" * 5000 + b"}", b"\xff\xfe"):
        with pytest.raises(InputInvalid, match="not a JSON object"):
            parse_quant_state(np.frombuffer(raw, np.uint8), "nf4")
