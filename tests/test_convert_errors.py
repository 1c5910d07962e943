"""Bad input to `quantcli convert`: one line on stderr, the documented exit code (quantcli/errors.py),
no traceback, no output or temporary file left, the input untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.errors import ExitCode, Unsupported

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
}


def _tiny_model(directory: Path, config: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((256, 64)).astype(np.float32),
        "model.norm.weight": np.ones(64, np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(64, np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 64)).astype(np.float32),
    }
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def _snapshot(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", "convert", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        # QUANTCLI_NATIVE=0: no notice from the C extension loader on stderr (we count stderr lines)
        env={
            "PYTHONPATH": str(REPO),
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            "QUANTCLI_NATIVE": "0",
        },
    )


def _assert_clean_failure(
    proc: subprocess.CompletedProcess[str], code: ExitCode, out_dir: Path, *words: str
) -> None:
    assert proc.returncode == int(code), (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    leftovers = [p.name for p in out_dir.iterdir() if p.suffix == ".gguf" or ".quantcli-tmp-" in p.name]
    assert leftovers == []


def test_missing_config(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "m")
    (model / "config.json").unlink()
    before = _snapshot(model)
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(str(model), "-o", str(out / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.INPUT_MISSING, out, "config.json")
    assert _snapshot(model) == before


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "m", {**TINY_CONFIG, "architectures": ["FancyNewForCausalLM"]})
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(str(model), "-o", str(out / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(
        proc, ExitCode.UNSUPPORTED, out, "FancyNewForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM"
    )


def test_unknown_architecture_reads_no_weight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli import engine
    from quantcli.loaders import safetensors as st

    def no_reads(self: object, name: str) -> None:
        raise AssertionError(f"weight {name} was read")

    monkeypatch.setattr(st.SafetensorsFile, "read", no_reads)
    model = _tiny_model(tmp_path / "m", {**TINY_CONFIG, "architectures": ["FancyNewForCausalLM"]})
    with pytest.raises(Unsupported):
        engine.convert_model(model, tmp_path / "x.gguf")


def test_truncated_safetensors(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "m")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-1000])
    before = _snapshot(model)
    proc = _run(str(model), "-o", str(tmp_path / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.INPUT_INVALID, tmp_path, "model.safetensors", "truncated")
    assert _snapshot(model) == before


def test_header_span_past_end_of_file(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    header = json.dumps(
        {
            "model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]},
            "model.embed_tokens.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": [256, 16640]},
        }
    ).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1024)
    proc = _run(str(model), "-o", str(tmp_path / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.INPUT_INVALID, tmp_path, "model.embed_tokens.weight", "past the end")


def test_output_exists_is_refused_and_kept(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "m")
    target = tmp_path / "out" / "x.gguf"
    target.parent.mkdir()
    target.write_bytes(b"precious")
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", "convert", str(model), "-o", str(target), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == ExitCode.OUTPUT_EXISTS
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout) == {
        "schema": "quantcli/1",
        "command": "convert",
        "ok": False,
        "error": proc.stderr.strip().removeprefix("error: "),
        "error_type": "OutputExists",
        "exit_code": 6,
    }
    assert target.read_bytes() == b"precious"
    assert [p.name for p in target.parent.iterdir()] == ["x.gguf"]


@pytest.mark.parametrize("kind", ["missing-dir", "parent-is-a-file"])
def test_unwritable_output_directory(tmp_path: Path, kind: str) -> None:
    # Tests run as root, where permission bits do not stop writes: use directories that cannot exist.
    model = _tiny_model(tmp_path / "m")
    if kind == "missing-dir":
        target = tmp_path / "nowhere" / "x.gguf"
    else:
        (tmp_path / "plainfile").write_text("")
        target = tmp_path / "plainfile" / "x.gguf"
    proc = _run(str(model), "-o", str(target), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.OUTPUT_FAILED, tmp_path, "output directory")
    assert not target.exists()


def test_unsupported_weight_dtype(tmp_path: Path) -> None:
    model = _tiny_model(tmp_path / "m")
    save_file({"model.embed_tokens.weight": np.zeros((256, 64), np.int32)}, str(model / "model.safetensors"))
    proc = _run(str(model), "-o", str(tmp_path / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.UNSUPPORTED, tmp_path, "model.embed_tokens.weight", "I32")


@pytest.mark.slow
def test_failure_mid_write_leaves_nothing(smollm2_dir: Path, tmp_path: Path) -> None:
    """A non-finite weight stops Q8_0 quantization after the header is written: no file, no temp file."""
    model = _tiny_model(tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / name, model / name)
    rng = np.random.default_rng(1)
    embed = rng.standard_normal((49152, 64)).astype(np.float16)  # as many rows as vocab_size
    q = rng.standard_normal((64, 64)).astype(np.float32)
    q[3, 5] = np.inf
    save_file(
        {
            "model.embed_tokens.weight": embed,
            "model.norm.weight": np.ones(64, np.float32),
            "model.layers.0.self_attn.q_proj.weight": q,
        },
        str(model / "model.safetensors"),
    )
    cfg = {**TINY_CONFIG, "vocab_size": 49152}
    (model / "config.json").write_text(json.dumps(cfg))
    before = _snapshot(model)
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(str(model), "--type", "q8_0", "-o", str(out / "x.gguf"), cwd=tmp_path)
    _assert_clean_failure(proc, ExitCode.INPUT_INVALID, out, "non-finite")
    assert list(out.iterdir()) == []
    assert _snapshot(model) == before
