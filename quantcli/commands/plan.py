"""`quantcli plan MODEL --type T|--bits N`: llama-quantize's per-tensor decisions and the output size, no compute."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from quantcli.commands import _options as opt
from quantcli.console import out, print_wide

HELP = """Show, before any output is written, the type llama-quantize would give every tensor for a recipe, why,
and which tensors need a fallback type (row length not a multiple of the block size), plus totals:
bytes, bits per weight and the output file size (to the byte for a GGUF source). The table goes to
stdout; --json prints one object (docs/json.md).

MODEL is a GGUF file (F32/F16/BF16 weights) or a Hugging Face model directory (planned as the GGUF
llama.cpp's converter writes at the checkpoint's precision, e.g. --outtype bf16, then quantized).

Examples:

* `quantcli plan smol-f16.gguf --type Q4_K_M`
* `quantcli plan ./SmolLM2-135M --bits 4 --json`
* `quantcli plan smol-f16.gguf --type Q4_K_M --tensor-type 'attn_v=q8_0' --strict`
* `quantcli plan ./SmolLM2-135M --target-size 100MB --imatrix imatrix.gguf` (types chosen per tensor from
  measured errors; the file size shown is the output's, to the byte)
"""


def register(app: typer.Typer) -> None:
    @app.command("plan", help=HELP)
    @opt.recipe_options(
        imatrix="Importance matrix (changes some rules).",
        include_weights="Use imatrix entries containing this.",
        exclude_weights="Ignore imatrix entries containing this.",
        tensor_type="REGEX=TYPE (repeatable, first match wins).",
        leave_output_tensor="Keep output.weight as is.",
        pure="No k-quant mixture.",
    )
    @opt.calibration_options()
    def plan(
        source: Path = typer.Argument(..., metavar="MODEL", help="GGUF file or HF model directory."),
        qtype: str | None = typer.Option(None, "--type", "-t", metavar="TYPE", help="Recipe, e.g. Q4_K_M (docs/recipes.md)."),
        bits: int | None = typer.Option(None, "--bits", metavar="N", help="Shorthand: 8 6 5 4 3 2 (docs/recipes.md)."),
        target_size: str | None = opt.target_size(),
        target_bpw: float | None = opt.target_bpw(),
        recipe: dict[str, Any] = opt.RECIPE,
        calibration: dict[str, Any] = opt.CALIBRATION,
        strict: bool = opt.strict("Exit 8 if any tensor needs a fallback type."),
        json_out: bool = opt.json_out("Print the plan as JSON on stdout."),
    ) -> None:
        from quantcli.console import show_progress
        from quantcli.engine import make_job, run

        job = make_job(
            source, None, out_type=qtype, bits=bits, **recipe, **calibration, strict=strict, dry_run=True,
            recipe_only=True, command="plan", target_size=target_size, target_bpw=target_bpw,
        )  # fmt: skip
        doc = run(job, progress=sys.stderr.isatty() and show_progress(json_out))
        if json_out:
            print(json.dumps(doc))
        else:
            _show(doc)


def _show(doc: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{doc['source']} -> {doc['file_type']}", title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("why")
    table.add_column("fallback", no_wrap=True)
    for t in doc["tensors"]:
        fallback = f"[yellow]{t['fallback_from']} -> {t['type']}[/]" if t["fell_back"] and t["fallback_from"] else ""
        table.add_row(
            t["name"], "x".join(str(n) for n in t["shape"]), t["src_type"], t["type"], f"{t['bytes']:,}",
            t["reason"], fallback,
        )  # fmt: skip
    # Not a terminal (piped, CI): do not squeeze the table into 80 columns.
    print_wide(table, 200)
    hist = ", ".join(f"{k} {v}" for k, v in doc["tensor_types"].items())
    out.print(
        f"{doc['n_tensors']} tensors ({hist}); {doc['n_fallbacks']} fallback(s); {doc['parameters']:,} weights; "
        f"tensor data {doc['src_tensor_bytes']:,} -> {doc['tensor_bytes']:,} bytes, {doc['bits_per_weight']:.2f} bpw; "
        f"file {doc['bytes']:,} bytes"
    )
