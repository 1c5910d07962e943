"""`quantcli generate MODEL --prompt TEXT -n N`: greedy decoding with the NumPy runtime."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from quantcli.commands import _options as opt
from quantcli.console import err, json_doc, peak_rss_bytes, print_json
from quantcli.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_command(
        model: Path = opt.runtime_model(),
        prompt: str = typer.Option(..., "--prompt", "-p", metavar="TEXT", help="Prompt text."),
        n_predict: int = typer.Option(32, "-n", "--n-predict", metavar="N", help="Number of tokens to generate."),
        ctx: int = opt.ctx(0, "Context size (default: prompt + n)."),
        exact: bool = opt.exact_activations(),
        json_out: bool = opt.json_out(
            "Print prompt/generated token ids and text as one JSON object (docs/json.md)."
        ),
    ) -> None:
        """Greedy (argmax) continuation of PROMPT, printed as it is generated. Stops early at an
        end-of-generation token (EOS, EOT, <|im_end|>, <end_of_turn>, ... as llama.cpp's
        llama_vocab_is_eog), which is not printed. Tokens per second go to stderr."""
        from quantcli.runtime import open_model
        from quantcli.runtime.generate import greedy

        if n_predict < 0:
            raise UsageError("-n must be >= 0")
        started = time.perf_counter()
        m, tokenizer = open_model(model, emulate_ggml=not exact)
        result = greedy(m, tokenizer, prompt, n_predict, ctx or None, stream=None if json_out else sys.stdout)
        facts = {
            "source": str(model),
            **result,
            "n_tokens": len(result["tokens"]),
            "seconds": round(time.perf_counter() - started, 3),
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if json_out:
            print_json(json_doc("generate", True, **facts))
            return
        print()
        err.print(
            f"{len(result['tokens'])} tokens in {result['decode_seconds']:.2f} s "
            f"({result['tokens_per_second']:.1f} tokens/s); prompt {len(result['prompt_tokens'])} tokens "
            f"in {result['prompt_seconds']:.2f} s" + (f"; stopped at {result['stop']}" if result["stop"] else ""),
            markup=False,
        )

    return None
