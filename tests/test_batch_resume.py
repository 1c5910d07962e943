"""`quantcli convert --resume`: a conversion killed with SIGKILL midway, run again with --resume, re-quantizes
only the tensors that were not finished and writes the same bytes as an uninterrupted run.

The killed run's temp file (SIGKILL cannot be trapped) is removed by the rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from test_batch_models import tiny_llama

from quantcli.atomic import TEMP_MARK
from quantcli.engine import convert_model
from quantcli.jobstate import TensorCache

REPO = Path(__file__).resolve().parent.parent
KILL_AFTER = 9  # tensors written before the SIGKILL




def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def test_sigkill_midway_then_resume_is_byte_identical(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "model", seed=7)
    clean = tmp_path / "clean.gguf"
    expected = convert_model(model, clean, out_type="q8_0")
    quantized = expected["tensor_types"]["Q8_0"]
    out = tmp_path / "out.gguf"

    # A conversion that SIGKILLs itself right after its KILL_AFTER-th tensor was written: no clean-up runs.
    driver = textwrap.dedent(f"""
        import os, signal
        from quantcli.engine import convert_model
        written = []
        def on_tensor(tensor, index, total):
            written.append(tensor.type.name)
            if index == {KILL_AFTER}:
                print(sum(t == "Q8_0" for t in written), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        convert_model({str(model)!r}, {str(out)!r}, out_type="q8_0", resume=True, on_tensor=on_tensor)
    """)
    proc = subprocess.run([sys.executable, "-c", driver], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    done_quantized = int(proc.stdout.strip())
    assert 0 < done_quantized < quantized
    assert not out.exists()  # atomic output: nothing at the target
    (stale,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_MARK)]  # SIGKILL: no clean-up ran
    cache_dir = tmp_path / "out.gguf.quantcli-cache"
    assert len(TensorCache(cache_dir)) == done_quantized

    rerun = subprocess.run(
        [sys.executable, "-m", "quantcli", "convert", str(model), "--type", "q8_0", "-o", str(out), "--resume",
         "--json"], env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["tensor_cache"] == {"hits": done_quantized, "misses": quantized - done_quantized,
                                      "puts": quantized - done_quantized}
    assert out.read_bytes() == clean.read_bytes()
    assert result["sha256"] == expected["sha256"]
    assert not cache_dir.exists()  # removed once the output is in place
    # the rerun removed the killed run's temp (its owner is dead) and said so
    assert f"removed stale partial output {tmp_path / stale} (" in rerun.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"model", "clean.gguf", "out.gguf"}


def test_resume_reuses_every_tensor_and_ignores_a_damaged_entry(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "model", seed=8)
    first = tmp_path / "a.gguf"
    cache = TensorCache(tmp_path / "cache")
    convert_model(model, first, out_type="q8_0", tensor_cache=cache)
    quantized = cache.stats()["puts"]
    assert cache.stats() == {"hits": 0, "misses": quantized, "puts": quantized}
    victim = next(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    again = TensorCache(tmp_path / "cache")
    convert_model(model, tmp_path / "b.gguf", out_type="q8_0", tensor_cache=again)
    assert again.stats() == {"hits": quantized - 1, "misses": 1, "puts": 1}
    assert (tmp_path / "b.gguf").read_bytes() == first.read_bytes()
    # other options (type) never hit this cache's entries
    other = TensorCache(tmp_path / "cache")
    convert_model(model, tmp_path / "c.gguf", out_type="f16", tensor_cache=other)
    assert other.stats()["hits"] == 0
