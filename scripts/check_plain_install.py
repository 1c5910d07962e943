#!/usr/bin/env python3
"""quantcli from a plain `pip install .` in a fresh venv: convert --verify, eval, generate and imatrix run.

The models are built with the calling (development) environment: the SmolLM2-135M fixture
(scripts/make_smollm2_fixture.py) and a small random Gemma 3 with a trained SentencePiece vocabulary
(scripts/make_spm_gemma3.py, needs torch). Then a venv in a temporary directory gets `pip install REPO` —
not editable, no extras, the same pip configuration as the rest of CI — and must lack torch, transformers
and protobuf, so nothing the tests install can stand in for a missing dependency. Every command runs with
the venv's `quantcli` from a directory outside the checkout, with PYTHONPATH unset, and must exit 0; the
script prints each command's time and output (stdout, or else stderr's last line: convert's verify
verdict under the default --max-kld 0.1 gate), and exits 1 at the first failure with the command's output.

Usage: check_plain_install.py   (run by `make test-plain` and `make test`)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Packages the test environment has that a plain install must not need.
FORBIDDEN = ("torch", "transformers", "protobuf")
PROMPT = "def fibonacci(n):\n    "
# Keeps the check near two minutes on 2 cores: eval/imatrix read 2 chunks, --verify its default 4.
CHUNKS = "2"


def _text_lines(output: str) -> list[str]:
    """The lines that hold text, rich's table borders dropped and whitespace collapsed."""
    return [" ".join(line.replace("│", " ").split()) for line in output.splitlines() if any(c.isalnum() for c in line)]


def run(label: str, cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None, echo: bool = True) -> str:
    """Run `cmd`, print its time and what it printed; on a non-zero exit print its output and exit 1."""
    start = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    # Results go to stdout (eval's table, generated text), progress and summaries to stderr: show stdout, or
    # else stderr's last line (convert's verify verdict, imatrix's "wrote ...").
    shown = (" | ".join(_text_lines(proc.stdout)) or " ".join(_text_lines(proc.stderr)[-1:])) if echo else ""
    print(f"{took:6.1f}s  {label}: {shown}", flush=True)
    if proc.returncode != 0:
        print(f"FAILED (exit {proc.returncode}): {' '.join(str(c) for c in cmd)}", file=sys.stderr)
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        sys.exit(1)
    return proc.stdout


def main() -> None:
    total = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quantcli-plain-") as tmp_name:
        tmp = Path(tmp_name)
        out = run("SmolLM2 fixture", [sys.executable, REPO / "scripts/make_smollm2_fixture.py", "--print-path"], REPO)
        smollm2 = Path(out.strip().splitlines()[-1])
        gemma = tmp / "gemma3-spm"
        run("Gemma 3 SentencePiece model", [sys.executable, REPO / "scripts/make_spm_gemma3.py", gemma], REPO)

        venv = tmp / "venv"
        run("venv", [sys.executable, "-m", "venv", venv], tmp, echo=False)
        python, quantcli = venv / "bin" / "python", venv / "bin" / "quantcli"
        run("pip install .", [python, "-m", "pip", "install", "--quiet", REPO], tmp, echo=False)
        listed = json.loads(run("pip list", [python, "-m", "pip", "list", "--format=json"], tmp, echo=False))
        present = sorted({p["name"].lower() for p in listed} & set(FORBIDDEN))
        if present:
            sys.exit(f"the plain venv has {', '.join(present)}: the check would not be honest")
        print(f"         {len(listed)} packages, none of {', '.join(FORBIDDEN)}")

        work = tmp / "work"
        work.mkdir()
        # The checkout must not be importable: cwd is outside it and PYTHONPATH is dropped. A wide terminal
        # keeps rich from wrapping the summary lines printed here.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "200"}
        where = run("import quantcli", [python, "-c", "import quantcli; print(quantcli.__file__)"], work, env)
        if not Path(where.strip()).is_relative_to(venv):
            sys.exit(f"quantcli was imported from {where.strip()}, not from the venv")

        for name, model in (("SmolLM2", smollm2), ("Gemma3-SPM", gemma)):
            # Relative to `work`, the cwd: rich titles the eval table with the path.
            gguf, imatrix = f"{name}-Q4_K_M.gguf", f"{name}.imatrix.gguf"
            steps: list[tuple[str, list[str | Path]]] = [
                ("convert --bits 4 --verify", ["convert", model, "--bits", "4", "--verify", "-o", gguf]),
                ("eval --base", ["eval", gguf, "--base", model, "--chunks", CHUNKS]),
                ("generate -n 8", ["generate", gguf, "-p", PROMPT, "-n", "8"]),
                ("imatrix", ["imatrix", model, "--chunks", CHUNKS, "-o", imatrix]),
            ]
            for label, args in steps:
                run(f"{name} {label}", [quantcli, *args], work, env)
    print(f"{time.monotonic() - total:6.1f}s  plain install: every command exited 0")


if __name__ == "__main__":
    main()
