"""`quantcli generate MODEL --prompt TEXT -n N`: greedy decoding with the NumPy runtime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from quantcli.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_command(
        model: Path = typer.Argument(..., help="GGUF file or HF checkpoint directory."),
        prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt text."),
        n_predict: int = typer.Option(32, "-n", "--n-predict", help="Number of tokens to generate."),
        ctx: int = typer.Option(0, "--ctx", help="Context size (default: prompt + n)."),
        exact: bool = typer.Option(
            False,
            "--exact-activations",
            help="Plain float32 math: no ggml-style activation rounding / F16 KV.",
        ),
        json_out: bool = typer.Option(
            False, "--json", help="Print prompt/generated token ids and text as JSON."
        ),
    ) -> None:
        """Greedy (argmax) continuation of PROMPT; stops early at the end-of-sequence token."""
        from quantcli.runtime import open_model
        from quantcli.runtime.generate import greedy

        if n_predict < 0:
            raise UsageError("-n must be >= 0")
        m, tokenizer = open_model(model, emulate_ggml=not exact)
        result = greedy(m, tokenizer, prompt, n_predict, ctx or None, stream=None if json_out else sys.stdout)
        if json_out:
            print(json.dumps({"ok": True, **result}))
        else:
            print()

    return None
