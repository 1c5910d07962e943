"""`quantcli convert`: HF checkpoint -> GGUF (F32, F16, BF16, Q8_0), same bytes as convert_hf_to_gguf.py."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from quantcli.console import err, show_progress

HELP = """Convert a Hugging Face checkpoint (directory with config.json + safetensors, or one .safetensors file
next to its config.json) to a GGUF file that llama.cpp loads.

The output is tensor-for-tensor and key-for-key what llama.cpp's `convert_hf_to_gguf.py --outtype TYPE`
writes. `--type auto` keeps BF16 checkpoints in BF16 and F16 ones in F16 (F32 checkpoints become F16,
as in llama.cpp). Without `-o`, the file is `<model dir>-<TYPE>.gguf` in the current directory.

Examples:

* `quantcli convert ./SmolLM2-135M --type q8_0 -o smol-q8_0.gguf`
* `quantcli convert ./SmolLM2-135M` (auto type, writes ./SmolLM2-135M-BF16.gguf)
* `quantcli convert ./model/model.safetensors --type f16 --force --json`
* `quantcli convert HuggingFaceTB/SmolLM2-135M-Instruct --type q8_0 --resume` (download; resumable)
"""


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP)
    def convert(
        source: Path = typer.Argument(
            ...,
            help="HF model directory, a .safetensors file next to config.json, or a Hub id org/name[@rev].",
        ),
        output: Path | None = typer.Option(None, "-o", "--output", help="Output .gguf path."),
        out_type: str = typer.Option("auto", "--type", "-t", help="auto, f32, f16, bf16 or q8_0."),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
        json_out: bool = typer.Option(
            False, "--json", help="Print one JSON object with the result on stdout."
        ),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="Quantization threads (C extension)."
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Cache quantized tensors beside the output; after a crash the same command redoes only the rest.",
        ),
    ) -> None:
        from quantcli.convert import convert_model
        from quantcli.hub import parse_hub_id, resolve_source

        # A Hub id (org/name[@rev]) is downloaded first; its default output is named after the repo.
        hub = parse_hub_id(str(source)) if not source.exists() else None
        result = convert_model(
            resolve_source(source),
            output,
            out_type=out_type,
            force=force,
            threads=threads,
            progress=show_progress(json_out),
            resume=resume,
            output_stem=hub[0].split("/")[-1] if hub else None,
        )
        if json_out:
            print(json.dumps(result))
        else:
            _summary(result)


def _summary(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['output']}", title_justify="left")
    table.add_column("type")
    table.add_column("tensors", justify="right")
    for qtype, count in result["tensor_types"].items():
        table.add_row(qtype, str(count))
    err.print(table)
    err.print(
        f"{result['architecture']} {result['file_type']}: {result['tensors']} tensors, "
        f"{result['parameters']:,} parameters, {result['bytes']:,} bytes in {result['seconds']:.1f} s, "
        f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB\nsha256 {result['sha256']}"
    )
