"""`quantcli imatrix MODEL --text FILE -o imatrix.gguf`: importance matrix in llama-imatrix's GGUF format."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from quantcli.commands import _options as opt
from quantcli.console import err, json_doc, peak_rss_bytes, print_json


def register(app: typer.Typer) -> None:
    @app.command("imatrix")
    def imatrix_command(
        model: Path = opt.runtime_model(),
        text: Path | None = opt.text("Calibration text (default: the shipped eval text)."),
        output: Path = typer.Option(..., "-o", "--output", metavar="FILE", help="Output imatrix file (.gguf)."),
        ctx: int = opt.ctx(512, "Tokens per chunk (llama-imatrix -c)."),
        chunks: int | None = opt.chunks("Process at most N chunks."),
        process_output: bool = typer.Option(False, "--process-output", help="Also collect output.weight."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT."),
        exact: bool = opt.exact_activations(),
        json_out: bool = opt.json_out(),
    ) -> None:
        """Collect per-column mean squared activations of every blk.* matmul, written in llama-imatrix's
        GGUF format."""
        from quantcli.atomic import atomic_path, check_output
        from quantcli.runtime import Model, load_tokenizer, open_source
        from quantcli.runtime.evaluate import plan_chunks
        from quantcli.runtime.imatrix import collect
        from quantcli.runtime.textdata import read_text

        started = time.perf_counter()
        check_output(output, force)
        body, text_name = read_text(text)
        source = open_source(model)
        plan = plan_chunks(load_tokenizer(model, source), body, ctx, chunks)

        def progress(done: int, total: int, info: dict) -> None:
            if not json_out:
                err.print(f"[{done}/{total}] ppl={info['ppl']:.4f}")

        collector, stats = collect(Model(source, emulate_ggml=not exact), plan, process_output, progress)
        with atomic_path(output, force) as tmp:
            collector.write_gguf(tmp, [text_name], plan.n_chunks, plan.n_ctx)
        summary = {
            "source": str(model),
            "output": str(output),
            "bytes": output.stat().st_size,
            "entries": len(collector.sums),
            **stats,
            "seconds": round(time.perf_counter() - started, 3),
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if json_out:
            print_json(json_doc("imatrix", True, **summary))
        else:
            err.print(f"wrote {len(collector.sums)} entries from {plan.n_chunks} chunks to {output}")

    return None
