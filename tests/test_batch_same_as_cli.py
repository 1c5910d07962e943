"""A batch job and `quantcli convert` make the same bytes for the same request: every `--bits N`, every
converter `--type`, recipes, and every packed `--format` (one rule, engine.target, decides what each means)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_batch_models import tiny_llama

from quantcli.batch import load_manifest, run_local

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# (manifest fields, convert flags); `bits: N` is `--bits N`, `type: T` is `--type T`.
REQUESTS = [
    *[({"bits": n}, ["--bits", str(n)]) for n in (2, 3, 4, 5, 6, 8)],
    *[({"type": t}, ["--type", t]) for t in ("auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q5_k_s", "iq4_nl")],
    *[({"format": f, "bits": b, "options": {"group_size": 32}}, ["--format", f, "--bits", str(b), "--group-size", "32"])
      for f, b in (("ct", 4), ("ct", 8), ("mlx", 3), ("mlx", 4), ("gptq", 4), ("gptq", 8))],
]  # fmt: skip


def _digest(path: Path) -> dict[str, str]:
    """A file's sha256, or every file's of a directory output."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_batch_and_cli_write_the_same_bytes(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "tiny", seed=11)
    manifest = tmp_path / "jobs.yaml"
    entries = [{"source": str(model), **fields, "output": f"batch/{i}"} for i, (fields, _) in enumerate(REQUESTS)]
    manifest.write_text(json.dumps({"jobs": entries}))
    jobs = load_manifest(manifest)
    assert len(jobs) == len(REQUESTS)
    results = sorted(run_local(jobs), key=lambda r: r["entry"])
    assert [r["status"] for r in results] == ["converted"] * len(REQUESTS), [r.get("error") for r in results]
    for i, (_, flags) in enumerate(REQUESTS):
        out = tmp_path / "cli" / str(i)
        out.parent.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "quantcli", "convert", str(model), *flags, "-o", str(out),
                               "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, (flags, proc.stderr)
        assert _digest(out) == _digest(tmp_path / "batch" / str(i)), flags
    # bits: 8 is llama-quantize's Q8_0 in both, and not the converter's q8_0
    assert _digest(tmp_path / "cli" / "5") != _digest(tmp_path / "cli" / str(6 + 4))
