"""`quantcli convert` end to end through the CLI: --json object, default output name, single-file source."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", "convert", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def test_json_and_default_output_name(smollm2_dir: Path, tmp_path: Path) -> None:
    proc = _cli(str(smollm2_dir), "--type", "q8_0", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON document on stdout
    out = tmp_path / f"{smollm2_dir.name}-Q8_0.gguf"
    assert result["output"] == str(out) and out.is_file()
    assert result["bytes"] == out.stat().st_size
    assert result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result["tensor_types"] == {"F32": 61, "Q8_0": 211} and result["n_tensors"] == 272
    assert result["architecture"] == "llama" and result["file_type"] == "Q8_0"
    assert result["seconds"] > 0 and result["peak_rss_bytes"] > 0
    # second run without --force: refused, file kept
    again = _cli(str(smollm2_dir), "--type", "q8_0", cwd=tmp_path)
    assert again.returncode == 6 and out.stat().st_size == result["bytes"]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_single_safetensors_file_equals_directory(smollm2_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "dir.gguf", tmp_path / "file.gguf"
    assert _cli(str(smollm2_dir), "--type", "f16", "-o", str(a), cwd=tmp_path).returncode == 0
    assert (
        _cli(str(smollm2_dir / "model.safetensors"), "--type", "f16", "-o", str(b), cwd=tmp_path).returncode
        == 0
    )
    assert a.read_bytes() == b.read_bytes()


def test_output_directory_takes_the_default_name(tmp_path: Path) -> None:
    """`-o DIR/` and `-o EXISTING_DIR` put the default-named GGUF inside; a packed `-o` names the directory."""
    from test_batch_models import tiny_llama

    model = tiny_llama(tmp_path / "tiny", seed=3)
    (tmp_path / "new").mkdir()
    for target, expected in ((f"{tmp_path / 'made'}/", tmp_path / "made"), (str(tmp_path / "new"), tmp_path / "new")):
        if target.endswith("/"):
            Path(target).mkdir()
        proc = _cli(str(model), "--type", "q8_0", "-o", target, "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["output"] == str(expected / "tiny-Q8_0.gguf")
        assert (expected / "tiny-Q8_0.gguf").is_file()
    proc = _cli(str(model), "--format", "mlx", "--bits", "4", "--group-size", "32", "-o",
                str(tmp_path / "new"), "--json", cwd=tmp_path)
    assert proc.returncode == 6  # an existing packed output directory needs --force
