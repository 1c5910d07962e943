"""Our GGUF files load in the real llama.cpp and generate sensible text (greedy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from reference import tool, tool_env

from quantcli.engine import convert_model

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_llama_simple_completes_paris(smollm2_dir: Path, tmp_path: Path, out_type: str) -> None:
    model = tmp_path / f"smol-{out_type}.gguf"
    convert_model(smollm2_dir, model, out_type=out_type)
    # llama-simple decodes greedily; stdout is the prompt followed by the completion.
    proc = subprocess.run(
        [str(tool("llama-simple")), "-m", str(model), "-n", "12", PROMPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    completion = proc.stdout.split(PROMPT, 1)[-1]
    assert "Paris" in completion, proc.stdout
