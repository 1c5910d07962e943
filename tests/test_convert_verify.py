"""`quantcli convert --verify`: the quality gate (quantcli.runtime.verify) after writing.

Passes for Q8_0 and Q4_K_M of SmolLM2 (figures in the --json result), fails with exit 9 (VerifyFailed) for
an output whose tensors were deliberately corrupted (a quantizer that scrambles ffn_down / attn_output
rows), and works the same for packed outputs. Kept short: 1-2 chunks of 512 tokens per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantcli import quants
from quantcli.cli import main

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON document, also when the gate fails
    return code, json.loads(out[0])


@pytest.mark.parametrize("bits", ["8", "4"])
def test_verify_passes_for_good_recipes(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bits: str
) -> None:
    out = tmp_path / "out.gguf"
    code, result = run(
        capsys, "convert", str(smollm2_dir), "--bits", bits, "-o", str(out), "--verify", "--verify-chunks", "2", "--json"
    )
    assert code == 0, result
    report = result["verify"]
    assert result["ok"] and report["passed"] and report["chunks"] == 2 and report["n_ctx"] == 512
    assert report["output"] == str(out) and report["max_kld"] == 0.1
    assert 0 < report["kld_mean"] < 0.1 and report["kld_p99"] >= report["kld_mean"]
    assert 0.99 < report["ppl_ratio"] < (1.03 if bits == "8" else 1.15)
    assert report["top1_agreement"] > (0.93 if bits == "8" else 0.75)
    assert abs(report["ppl_output"] / report["ppl_source"] - report["ppl_ratio"]) < 1e-9


def test_verify_fails_with_exit_9_for_corrupted_tensors(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quants.quantize

    def scrambling(rows: np.ndarray, qtype, imatrix=None, **kw):  # noqa: ANN001, ANN003, ANN202
        if any(part in kw.get("name", "") for part in ("ffn_down", "attn_output")):
            rows = np.ascontiguousarray(rows[:, ::-1])  # valid bytes, wrong weights
        return real(rows, qtype, imatrix, **kw)

    monkeypatch.setattr(quants, "quantize", scrambling)
    out = tmp_path / "bad.gguf"
    code, result = run(
        capsys, "convert", str(smollm2_dir), "--bits", "8", "-o", str(out), "--verify", "--verify-chunks", "1", "--json"
    )
    assert code == 9
    report = result["verify"]
    assert result["ok"] is False and report["passed"] is False
    assert report["kld_mean"] > 0.1 and report["ppl_ratio"] > 1.2
    assert out.is_file()  # kept for inspection; the exit code says it failed


def test_verify_on_packed_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A packed directory is verified through its dequantized read-back; a gate it cannot meet -> exit 9."""
    from test_convert_quantized import synthetic_dir

    model = synthetic_dir()
    out = tmp_path / "mlx4"
    code, result = run(
        capsys, "convert", str(model), "--format", "mlx", "--bits", "4", "-o", str(out), "--verify",
        "--verify-chunks", "1", "--max-kld", "1", "--json",
    )  # fmt: skip
    assert code == 0, result
    assert result["verify"]["passed"] and result["verify"]["kld_mean"] > 0  # 4-bit is not lossless
    code, result = run(
        capsys, "convert", str(model), "--format", "mlx", "--bits", "4", "-o", str(out), "--force", "--verify",
        "--verify-chunks", "1", "--max-kld", "0", "--json",
    )  # fmt: skip
    assert code == 9 and result["ok"] is False and result["verify"]["passed"] is False
