"""`quantcli quantize IN.gguf OUT.gguf TYPE`: the same bytes as `llama-quantize IN OUT TYPE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from quantcli.commands import _options as opt
from quantcli.console import err, show_progress

HELP = """Quantize a GGUF file (F32/F16/BF16 weights) to TYPE, byte-identical to llama.cpp's
`llama-quantize IN OUT TYPE` with the same options. IN may also be a Hugging Face model directory: the
result is then byte-identical to `convert_hf_to_gguf.py --outtype bf16` (the checkpoint's own precision:
bf16, f16 or f32) followed by `llama-quantize`, made in one pass (see also `quantcli convert --bits N`).

TYPE is a llama-quantize recipe: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q2_K_S Q3_K_S Q3_K_M Q3_K_L Q4_K_S
Q4_K_M Q5_K_S Q5_K_M Q6_K IQ4_NL IQ4_XS TQ1_0 TQ2_0 MXFP4_MOE F16 BF16 F32 (aliases Q3_K, Q4_K, Q5_K;
see docs/recipes.md). Every check (type names, `--tensor-type` patterns, imatrix fit, `--strict`) runs
before any output is created; the output appears atomically when complete.

Examples:

* `quantcli quantize smol-f16.gguf smol-q4_k_m.gguf Q4_K_M`
* `quantcli quantize smol-f16.gguf smol-q4_0.gguf q4_0 --imatrix imatrix.gguf`
* `quantcli quantize in.gguf out.gguf Q4_K_M --tensor-type 'ffn_down=q8_0' --strict --json`
* `quantcli quantize in.gguf out.gguf --target-size 95MB --imatrix imatrix.gguf` (no TYPE: every tensor's
  type is chosen from its measured error so that the file fills 95 MB, never more; docs/recipes.md)
"""


def register(app: typer.Typer) -> None:
    @app.command("quantize", help=HELP)
    @opt.recipe_options()
    @opt.calibration_options()
    def quantize(
        source: Path = typer.Argument(..., metavar="INPUT", help="Input GGUF (F32/F16/BF16 weights) or HF model directory."),
        output: Path = typer.Argument(..., metavar="OUTPUT", help="Output GGUF path."),
        qtype: str | None = typer.Argument(
            None, metavar="TYPE", help="Recipe, e.g. Q4_K_M (see docs/recipes.md); none with a size target."
        ),
        target_size: str | None = opt.target_size(),
        target_bpw: float | None = opt.target_bpw(),
        recipe: dict[str, Any] = opt.RECIPE,
        calibration: dict[str, Any] = opt.CALIBRATION,
        allow_requantize: bool = typer.Option(
            False, "--allow-requantize", help="Allow already-quantized input tensors."
        ),
        strict: bool = opt.strict("Refuse (exit 8) if any tensor needs a fallback type."),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
        json_out: bool = opt.json_out(),
        threads: int | None = opt.threads(),
    ) -> None:
        from quantcli.engine import make_job, run
        from quantcli.errors import UsageError

        if qtype is None and target_size is None and target_bpw is None:
            raise UsageError("missing TYPE (a recipe such as Q4_K_M), or give --target-size / --target-bpw")
        job = make_job(
            source, output, out_type=qtype, **recipe, **calibration, strict=strict, force=force,
            threads=threads, allow_requantize=allow_requantize, recipe_only=True, command="quantize",
            target_size=target_size, target_bpw=target_bpw,
        )  # fmt: skip
        # Not a terminal (a pipe, a bench): no progress, and no rich import (25 ms) just to learn that.
        progress = sys.stderr.isatty() and show_progress(json_out)

        def on_tensor(t: object, i: int, n: int) -> None:
            if progress:
                err.print(f"[{i:4d}/{n:4d}] {t.name}", end="\r")  # type: ignore[attr-defined]

        summary = run(job, on_tensor=on_tensor)
        if json_out:
            print(json.dumps(summary))
            return
        for f in summary["fallbacks"]:
            err.print(f"[yellow]fallback[/] {f['name']}: {f['why']}")
        missing = summary["imatrix_missing"]
        if missing:
            err.print(f"[yellow]imatrix has no entry for {len(missing)} tensor(s)[/], e.g. {missing[0]}")
        hist = ", ".join(f"{k} {v}" for k, v in summary["tensor_types"].items())
        # Plain text (no markup): printed without rich, one line each whatever the width.
        print(
            f"{summary['output']}: {summary['file_type']}, {summary['n_tensors']} tensors ({hist}), "
            f"{summary['n_fallbacks']} fallback(s), {summary['bytes']:,} bytes, {summary['bits_per_weight']:.2f} bpw, "
            f"{summary['seconds']:.1f} s, peak RSS {summary['peak_rss_bytes'] / 2**20:.0f} MiB\n"
            f"sha256 (whole file) {summary['sha256']}",
            file=sys.stderr,
        )
