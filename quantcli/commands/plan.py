"""`quantcli plan MODEL --type T|--bits N`: llama-quantize's per-tensor decisions and the output size, no compute."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from quantcli.commands import _options as opt
from quantcli.console import out, print_wide

HELP = """Show, before any compute, the type llama-quantize would give every tensor for a recipe, why,
and which tensors need a fallback type (row length not a multiple of the block size), plus totals:
bytes, bits per weight and the output file size (to the byte for a GGUF source). The table goes to
stdout; --json prints one object (docs/json.md).

MODEL is a GGUF file (F32/F16/BF16 weights) or a Hugging Face model directory (planned as the GGUF
llama.cpp's converter writes at the checkpoint's precision, e.g. --outtype bf16, then quantized).

Examples:

* `quantcli plan smol-f16.gguf --type Q4_K_M`
* `quantcli plan ./SmolLM2-135M --bits 4 --json`
* `quantcli plan smol-f16.gguf --type Q4_K_M --tensor-type 'attn_v=q8_0' --strict`
"""


def register(app: typer.Typer) -> None:
    @app.command("plan", help=HELP)
    def plan(
        source: Path = typer.Argument(..., metavar="MODEL", help="GGUF file or HF model directory."),
        qtype: str | None = typer.Option(None, "--type", "-t", metavar="TYPE", help="Recipe, e.g. Q4_K_M (docs/recipes.md)."),
        bits: int | None = typer.Option(None, "--bits", metavar="N", help="Shorthand: 8 6 5 4 3 2 (docs/recipes.md)."),
        imatrix: str | None = opt.imatrix("Importance matrix (changes some rules)."),
        include_weights: list[str] = opt.include_weights("Use imatrix entries containing this."),
        exclude_weights: list[str] = opt.exclude_weights("Ignore imatrix entries containing this."),
        output_tensor_type: str | None = opt.output_tensor_type(),
        token_embedding_type: str | None = opt.token_embedding_type(),
        tensor_type: list[str] = opt.tensor_type("REGEX=TYPE (repeatable, first match wins)."),
        override_kv: list[str] = opt.override_kv(),
        tensor_type_file: Path | None = opt.tensor_type_file(),
        leave_output_tensor: bool = opt.leave_output_tensor("Keep output.weight as is."),
        pure: bool = opt.pure("No k-quant mixture."),
        strict: bool = opt.strict("Exit 8 if any tensor needs a fallback type."),
        json_out: bool = opt.json_out("Print the plan as JSON on stdout."),
    ) -> None:
        from quantcli.plan.ftypes import resolve_recipe
        from quantcli.plan.source import plan_source

        ftype = resolve_recipe(qtype, bits)
        im, overrides = opt.load_recipe_options(
            imatrix=imatrix,
            include_weights=include_weights,
            exclude_weights=exclude_weights,
            pure=pure,
            output_tensor_type=output_tensor_type,
            token_embedding_type=token_embedding_type,
            tensor_type=tensor_type,
            tensor_type_file=tensor_type_file,
            leave_output_tensor=leave_output_tensor,
            override_kv=override_kv,
            set_has_imatrix=True,
        )
        planned = plan_source(source, ftype, overrides, im)
        plan_obj = planned.plan
        if json_out:
            doc = {"ok": not (strict and plan_obj.n_fallback), "source": str(source), **plan_obj.to_json()}
            doc["file_size"] = planned.file_size
            doc["file_size_exact"] = planned.file_size_exact
            doc["src_bytes"] = plan_obj.src_tensor_bytes
            if not (strict and plan_obj.n_fallback):
                print(json.dumps(doc))
        else:
            _show(planned)
        if strict:
            plan_obj.refuse_fallbacks()


def _show(planned) -> None:  # noqa: ANN001
    from rich.table import Table

    plan = planned.plan
    table = Table(title=f"{planned.source} -> {plan.recipe.name}", title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("why")
    table.add_column("fallback", no_wrap=True)
    for d in plan.decisions:
        fallback = (
            f"[yellow]{d.fallback_from.name} -> {d.type.name}[/]" if d.fell_back and d.fallback_from else ""
        )
        table.add_row(
            d.name,
            "x".join(str(n) for n in d.ne),
            d.src_type.name,
            d.type.name,
            f"{d.nbytes:,}",
            d.reason,
            fallback,
        )
    # Not a terminal (piped, CI): do not squeeze the table into 80 columns.
    print_wide(table, 200)
    hist = ", ".join(f"{k} {v}" for k, v in plan.type_histogram().items())
    size = f"{planned.file_size:,} bytes" + ("" if planned.file_size_exact else " (KV section estimated)")
    out.print(
        f"{len(plan.decisions)} tensors ({hist}); {plan.n_fallback} fallback(s); {plan.n_elements:,} weights; "
        f"tensor data {plan.src_tensor_bytes:,} -> {plan.tensor_bytes:,} bytes, {plan.bits_per_weight:.2f} bpw; "
        f"file {size}"
    )
