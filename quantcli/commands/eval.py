"""`quantcli eval MODEL`: perplexity (llama-perplexity's method) and, with --base, KL divergence."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import typer

from quantcli.commands import _options as opt
from quantcli.console import err, json_doc, peak_rss_bytes, print_json, print_wide


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: Path = opt.runtime_model(),
        text: Path | None = opt.text("UTF-8 text file (default: the shipped eval text)."),
        ctx: int = opt.ctx(512, "Context size per chunk (llama-perplexity -c)."),
        chunks: int | None = opt.chunks("Evaluate at most N chunks."),
        base: Path | None = typer.Option(
            None,
            "--base",
            metavar="MODEL",
            help="Base model (GGUF, HF dir, or a llama-perplexity --kl-divergence-base file): also report KLD / "
            "top-1 agreement against it.",
        ),
        exact: bool = opt.exact_activations(),
        json_out: bool = opt.json_out(),
    ) -> None:
        """Perplexity of MODEL on a text, computed as llama-perplexity does; with --base, also the KL
        divergence and top-1 agreement against the base model's token distributions."""
        from quantcli.runtime import Model, load_tokenizer, open_source
        from quantcli.runtime.evaluate import (
            base_log_probs,
            is_llama_kl_base,
            kl_divergence,
            perplexity,
            plan_chunks,
            read_llama_kl_base,
        )
        from quantcli.runtime.textdata import read_text

        started = time.perf_counter()
        body, text_name = read_text(text)
        progress = _progress(json_out)
        if base is None:
            source = open_source(model)
            plan = plan_chunks(load_tokenizer(model, source), body, ctx, chunks)
            result = perplexity(Model(source, emulate_ggml=not exact), plan, progress)
        elif is_llama_kl_base(base):  # llama-perplexity --kl-divergence-base output
            source = open_source(model)
            plan, coded = read_llama_kl_base(base, load_tokenizer(model, source), chunks)
            err.print(f"base: llama.cpp log-probs {base} ({plan.n_chunks} chunks of {plan.n_ctx})")
            result = kl_divergence(Model(source, emulate_ggml=not exact), plan, coded, progress)
            result["base"] = str(base)
        else:
            base_source = open_source(base)
            plan = plan_chunks(load_tokenizer(base, base_source), body, ctx, chunks)
            err.print(f"base: {base} ({plan.n_chunks} chunks of {plan.n_ctx})")
            base_model = Model(base_source, emulate_ggml=not exact)
            coded = list(base_log_probs(base_model, plan, _progress(json_out, "base chunk")))
            del base_model, base_source
            gc.collect()
            target = Model(open_source(model), emulate_ggml=not exact)
            result = kl_divergence(target, plan, coded, progress)
            result["base"] = str(base)
        if "tokens" in result:  # the KLD summary's count; `tokens` is a list of ids elsewhere (docs/json.md)
            result["tokens_scored"] = result.pop("tokens")
        result.update(
            {
                "source": str(model),
                "seconds": round(time.perf_counter() - started, 3),
                "text": text_name,
                "tokens_total": int(plan.tokens.size),
                "peak_rss_bytes": peak_rss_bytes(),
                "ggml_numerics": not exact,
            }
        )
        if json_out:
            print_json(json_doc("eval", True, **result))
        else:
            _print(result)

    return None


def _progress(json_mode: bool, label: str = "chunk"):
    def show(done: int, total: int, info: dict) -> None:
        extra = " ".join(f"{k}={v:.4f}" for k, v in info.items())
        err.print(f"{label} {done}/{total} {extra}", highlight=False)

    return None if json_mode else show


def _print(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"eval {result['source']}", show_header=False)
    for key, label, fmt in [
        ("ppl", "PPL", "{:.4f}"),
        ("ppl_uncertainty", "PPL ±", "{:.5f}"),
        ("ppl_base", "PPL(base)", "{:.4f}"),
        ("ppl_ratio", "PPL ratio", "{:.5f}"),
        ("kld_mean", "mean KLD", "{:.6f}"),
        ("kld_p99", "99% KLD", "{:.6f}"),
        ("same_top", "top-1 agreement", "{:.3%}"),
        ("chunks", "chunks", "{}"),
        ("n_ctx", "n_ctx", "{}"),
        ("seconds", "seconds", "{:.1f}"),
    ]:
        if key in result:
            table.add_row(label, fmt.format(result[key]))
    print_wide(table, 160)
