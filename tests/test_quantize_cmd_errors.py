"""Bad input to `quantcli quantize` / `plan`: one-line error, a distinct exit code, no output file.

Also the imatrix readers against hand-made files (no llama.cpp needed).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_plan_synthetic import build_synthetic_gguf

from quantcli.errors import ExitCode
from quantcli.imatrix_file import load_imatrix

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", *argv], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_gguf(tmp_path_factory.mktemp("m") / "m.gguf", n_layer=2, n_ff=256, n_vocab=320)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Row length 320 (not a multiple of 256): K-quant recipes need fallbacks."""
    return build_synthetic_gguf(
        tmp_path_factory.mktemp("odd") / "odd.gguf", n_layer=2, n_embd=320, n_ff=256, n_vocab=320
    )


def write_gguf_imatrix(
    path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]], datasets=("text.txt",)
) -> Path:  # noqa: ANN001
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", list(datasets))
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 128)
    for name, (sums, counts) in entries.items():
        w.add_tensor(name + ".in_sum2", np.asarray(sums, dtype=np.float32))
        w.add_tensor(name + ".counts", np.asarray(counts, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_refused(proc: subprocess.CompletedProcess[str], code: ExitCode, out: Path, needle: str) -> None:
    assert proc.returncode == int(code), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".quantcli-tmp-")]


def test_unknown_type(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    assert_refused(run_cli("quantize", str(model), str(out), "Q4_K_X"), ExitCode.UNSUPPORTED, out, "Q4_K_X")
    proc = run_cli("quantize", str(model), str(out), "Q4_K_M", "--tensor-type", "attn_v=q7_k")
    assert_refused(proc, ExitCode.UNSUPPORTED, out, "q7_k")


def test_tensor_type_matching_nothing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    proc = run_cli("quantize", str(model), str(out), "Q4_K_M", "--tensor-type", "lm_head=q8_0")
    assert_refused(proc, ExitCode.USAGE, out, "matches no tensor")
    proc = run_cli("plan", str(model), "--type", "Q4_K_M", "--tensor-type", "lm_head=q8_0")
    assert proc.returncode == ExitCode.USAGE and "matches no tensor" in proc.stderr


def test_strict_with_fallbacks(odd_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    proc = run_cli("quantize", str(odd_model), str(out), "Q4_K_M", "--strict")
    assert_refused(proc, ExitCode.FALLBACK_REFUSED, out, "fallback")
    proc = run_cli("plan", str(odd_model), "--type", "Q4_K_M", "--strict", "--json")
    assert proc.returncode == ExitCode.FALLBACK_REFUSED
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == ExitCode.FALLBACK_REFUSED and "fallback" in doc["error"]
    # Without --strict the same file quantizes, and Q8_0 (block 32) needs no fallback even with --strict.
    assert run_cli("quantize", str(odd_model), str(out), "Q8_0", "--strict").returncode == 0
    assert out.exists()


def test_mismatched_imatrix(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    wrong_size = write_gguf_imatrix(
        tmp_path / "wrong.gguf", {"blk.0.attn_q.weight": (np.ones(512), np.ones(1))}
    )
    proc = run_cli("quantize", str(model), str(out), "Q4_K_M", "--imatrix", str(wrong_size))
    assert_refused(proc, ExitCode.IMATRIX_MISMATCH, out, "blk.0.attn_q.weight")
    other_model = write_gguf_imatrix(
        tmp_path / "other.gguf", {"blk.7.attn_q.weight": (np.ones(256), np.ones(1))}
    )
    proc = run_cli("quantize", str(model), str(out), "Q4_K_M", "--imatrix", str(other_model))
    assert_refused(proc, ExitCode.IMATRIX_MISMATCH, out, "different model")


def test_q2_k_s_requires_imatrix(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    assert_refused(run_cli("quantize", str(model), str(out), "Q2_K_S"), ExitCode.USAGE, out, "imatrix")


def test_existing_output_and_missing_input(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep")
    proc = run_cli("quantize", str(model), str(out), "Q8_0")
    assert proc.returncode == ExitCode.OUTPUT_EXISTS and out.read_bytes() == b"keep"
    proc = run_cli("quantize", str(tmp_path / "nope.gguf"), str(tmp_path / "o.gguf"), "Q8_0")
    assert proc.returncode == ExitCode.INPUT_MISSING
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(model.read_bytes()[:5000])  # truncated inside the KV section
    proc = run_cli("quantize", str(bad), str(tmp_path / "o.gguf"), "Q8_0")
    assert proc.returncode == ExitCode.INPUT_INVALID and "truncated" in proc.stderr


# --- imatrix readers -------------------------------------------------------------------------------


def test_gguf_imatrix_weights_are_mean_squares(tmp_path: Path) -> None:
    sums = np.array([[2.0, 4.0, 6.0], [1.0, 1.0, 1.0], [9.0, 3.0, 0.0]], dtype=np.float32)
    counts = np.array([[2.0], [0.0], [2.6]], dtype=np.float32)  # per matrix; 0 -> weights 1; 2.6 -> lround 3
    path = write_gguf_imatrix(tmp_path / "im.gguf", {"blk.0.ffn_down_exps.weight": (sums, counts)})
    im = load_imatrix(path)
    got = im.entries["blk.0.ffn_down_exps.weight"]
    np.testing.assert_array_equal(got, np.array([1, 2, 3, 1, 1, 1, 3, 1, 0], dtype=np.float32))
    assert (im.datasets, im.chunk_count, im.chunk_size, im.is_legacy) == (["text.txt"], 7, 128, False)


def test_legacy_dat_imatrix(tmp_path: Path) -> None:
    values = np.array([3.0, 6.0, 9.0, 12.0], dtype=np.float32)
    name = b"blk.0.attn_q.weight"
    blob = struct.pack("<i", 2)
    blob += struct.pack("<i", len(name)) + name + struct.pack("<ii", 3, 4) + values.tobytes()
    blob += struct.pack("<i", len(b"x.w")) + b"x.w" + struct.pack("<ii", 0, 4) + values.tobytes()
    blob += struct.pack("<ii", 11, 8) + b"data.txt"
    path = tmp_path / "im.dat"
    path.write_bytes(blob)
    im = load_imatrix(path)
    np.testing.assert_array_equal(im.entries["blk.0.attn_q.weight"], values / np.float32(3))
    np.testing.assert_array_equal(im.entries["x.w"], values)  # ncall 0: raw values
    assert (im.datasets, im.chunk_count, im.is_legacy) == (["data.txt"], 11, True)
    assert list(im.filtered(include=["attn"]).entries) == ["blk.0.attn_q.weight"]
    assert list(im.filtered(exclude=["attn"]).entries) == ["x.w"]


def test_imatrix_without_metadata_is_refused(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "plain.gguf"), "llama")
    w.add_tensor("a.in_sum2", np.ones(4, dtype=np.float32))
    w.add_tensor("a.counts", np.ones(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from quantcli.errors import InputInvalid

    with pytest.raises(InputInvalid, match="missing imatrix metadata"):
        load_imatrix(tmp_path / "plain.gguf")


def test_sigterm_leaves_nothing(tmp_path: Path) -> None:
    """Interrupted mid-write: exit 130, neither the output nor the temporary file remains."""
    import signal
    import time

    src = build_synthetic_gguf(tmp_path / "m.gguf", n_layer=16, n_ff=512, n_vocab=320)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "q.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantcli", "quantize", str(src), str(out), "IQ4_XS"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "QUANTCLI_NATIVE": "0"},  # slow NumPy IQ4: time to interrupt
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".quantcli-tmp-") for p in out_dir.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "quantize ended before it was interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert list(out_dir.iterdir()) == []
