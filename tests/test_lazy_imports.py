"""Heavy modules load only where they are used: `ml_dtypes` (0.6 s of import) is needed for BF16 safetensors
and packed formats, never by `--help`, `--version` or a GGUF -> GGUF job. A GGUF -> GGUF quantize imports
neither rich nor the HF-source modules
(tests/test_cli.py checks `--help` and `--version`).

Each check runs in a fresh interpreter and reads its `sys.modules` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_plan_synthetic import build_synthetic_gguf

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI in-process with each argv, then prints which of the watched modules were imported.
PROBE = """
import json, sys
from quantcli.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))
"""


def _imported_after(*argvs: list[str], watch: tuple[str, ...] = ("ml_dtypes",)) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(watch)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_version_do_not_import_ml_dtypes() -> None:
    assert _imported_after(["--help"], ["--version"], ["quantize", "--help"], ["convert", "--help"]) == []


def test_gguf_quantize_imports_only_what_it_needs(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "tiny-f16.gguf", n_layer=1, n_embd=64, n_ff=128, n_vocab=320)
    out = tmp_path / "tiny-q8_0.gguf"
    watch = (
        "rich", "ml_dtypes", "huggingface_hub", "tokenizers", "quantcli.sources.hf", "quantcli.runtime",
        # gguf-py's package beyond its constants (quantcli.gguf_constants) and what it pulls in, the
        # stale-temp check, calibration
        "gguf", "gguf.gguf_writer", "gguf.metadata", "yaml", "sentencepiece", "psutil",
        "threadpoolctl", "quantcli.engine.awq", "quantcli.quants.gptq",
    )  # fmt: skip
    argv = ["quantize", str(src), str(out), "Q8_0", "--threads", "2", "--output-tensor-type", "q8_0", "--json"]
    assert _imported_after(argv, watch=watch) == []
    assert out.stat().st_size > 0


def test_gguf_loader_import_does_not_import_ml_dtypes() -> None:
    code = "import sys, quantcli.loaders.gguf, quantcli.loaders; print('ml_dtypes' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_gguf_quantize_does_not_import_ml_dtypes(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "tiny-f16.gguf", n_layer=1, n_embd=64, n_ff=128, n_vocab=320)
    out = tmp_path / "tiny-q8_0.gguf"
    assert _imported_after(["quantize", str(src), str(out), "Q8_0"]) == []
    assert out.stat().st_size > 0


def test_bf16_safetensors_read_imports_ml_dtypes_on_demand(tmp_path: Path) -> None:
    """A process that has not imported ml_dtypes still reads a BF16 tensor as ml_dtypes.bfloat16."""
    import ml_dtypes
    import numpy as np

    from quantcli.writers.safetensors import write_file

    path = tmp_path / "w.safetensors"
    write_file(path, {"w": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)})
    code = (
        "import sys, numpy as np\n"
        "from quantcli.loaders.safetensors import SafetensorsFile\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        f"got = SafetensorsFile({str(path)!r}).read('w')\n"
        "print(got.dtype.name, got.astype(np.float32).ravel().tolist())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "bfloat16 [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]"
