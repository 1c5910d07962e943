"""Helpers the scripts/bench_*.py sections share: the SmolLM2 fixture, an F16 GGUF of it made by llama.cpp's
own converter, a process timed by GNU time, and a file's sha256. (Named with a leading underscore so bench.py does not run it as a section.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def smollm2_fixture() -> Path:
    """The SmolLM2-135M fixture directory (built on first use by scripts/make_smollm2_fixture.py)."""
    printed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_smollm2_fixture.py"), "--print-path"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(printed.strip().splitlines()[-1])


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmarked Python program (ours or llama.cpp's converter): this one without
    PYTHONDONTWRITEBYTECODE, so that modules are compiled once and their bytecode reused, as for an installed
    package (otherwise every run of quantcli recompiles it, ~0.2 s), and without NO_LOCAL_GGUF (the
    converter uses its own vendored gguf-py); plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NO_LOCAL_GGUF")}
    env.update(extra)
    return env


def cache_dir(name: str) -> Path:
    """$QUANTCLI_CACHE/<name> (default ~/.cache/quantcli/<name>), created."""
    cache = Path(os.environ.get("QUANTCLI_CACHE", Path.home() / ".cache" / "quantcli")) / name
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def convert_f16_with_llamacpp(model: Path, out: Path) -> Path:
    """`out`, made once by llama.cpp's convert_hf_to_gguf.py --outtype f16 from `model` (written to a .part
    file first, so an interrupted conversion is never taken for a finished one)."""
    if out.exists():
        return out
    sys.path.insert(0, str(REPO / "tests"))
    from reference import convert_with_llamacpp

    tmp = out.with_suffix(".part")
    proc = convert_with_llamacpp(model, tmp, "f16")
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    tmp.rename(out)
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of `cmd`, measured by GNU time; raises when it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", report.name, *cmd],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} failed:\n{proc.stderr[-3000:]}")
        wall, rss_kib = report.read().split()[-2:]
    return float(wall), int(rss_kib) * 1024, proc.stdout
