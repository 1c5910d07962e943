"""`quantcli convert MODEL --bits 4`: HF checkpoint -> quantized GGUF (llama.cpp-exact) or packed safetensors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from quantcli.commands import _options as opt
from quantcli.console import err, out, print_wide, show_progress

HELP = """Convert a Hugging Face checkpoint (directory with config.json + safetensors, a .safetensors file
next to its config.json, or a Hub id) to a quantized GGUF file that llama.cpp loads, or to packed
safetensors (compressed-tensors, MLX, GPTQ).

* `--bits N` / `--type RECIPE` (Q4_K_M, Q6_K, Q2_K, ... any llama-quantize recipe, case-insensitive): the
  same bytes as `convert_hf_to_gguf.py --outtype bf16` (the checkpoint's precision: bf16, f16 or f32)
  followed by `llama-quantize`, made in one pass with no intermediate file. --bits: 8 Q8_0, 6 Q6_K,
  5 Q5_K_M, 4 Q4_K_M, 3 Q3_K_M, 2 Q2_K.
* `--type auto|f32|f16|bf16|q8_0`: what `convert_hf_to_gguf.py --outtype TYPE` writes, byte for byte.
  Its q8_0 is the converter's own (tensor/key order and fallback rule differ from llama-quantize's Q8_0
  recipe): `--bits 8` gives llama-quantize's (docs/recipes.md).
* `--format ct|mlx|gptq|awq --bits N`: a packed safetensors directory (`<model>-<FORMAT>-<N>bit`).

`--dry-run` prints every tensor's type and why, and the exact output size, without writing. `--verify`
runs the source and the output on a text afterwards and fails (exit 9) if the mean KLD is above
`--max-kld`. `--method gptq` quantizes layer by layer against calibration text run through the model
(`--calib`; docs/calibration.md). Without `-o`, the output is `<model>-<TYPE>.gguf` in the current directory.

Examples:

* `quantcli convert ./SmolLM2-135M --bits 4` (writes ./SmolLM2-135M-Q4_K_M.gguf)
* `quantcli convert ./SmolLM2-135M --type q6_k --verify --json`
* `quantcli convert ./SmolLM2-135M --bits 4 --imatrix imatrix.gguf --tensor-type 'attn_v=q8_0' --dry-run`
* `quantcli convert ./SmolLM2-135M --type q8_0 -o smol-q8_0.gguf` (the converter's own Q8_0)
* `quantcli convert ./SmolLM2-135M --format mlx --bits 4`
* `quantcli convert ./SmolLM2-135M --format ct --bits 4 --group-size 64 --method gptq --calib my.jsonl`
* `quantcli convert ./SmolLM2-135M --target-size 100MB --imatrix imatrix.gguf` (every tensor's type chosen
  from its measured error so that the file fills 100 MB, never more)
* `quantcli convert HuggingFaceTB/SmolLM2-135M-Instruct --bits 4 --resume` (download; resumable)
"""


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP)
    @opt.recipe_options(override_kv="KEY=TYPE:VALUE metadata override, as llama-quantize.")
    @opt.calibration_options()
    def convert(
        source: Path = typer.Argument(
            ...,
            metavar="MODEL",
            help="HF model directory, a .safetensors file next to config.json, or a Hub id org/name[@rev].",
        ),
        output: Path | None = typer.Option(
            None,
            "-o",
            "--output",
            metavar="PATH",
            help="Output .gguf file (a directory for packed formats). A trailing / or an existing directory: "
            "the default-named output goes into that directory.",
        ),
        out_type: str | None = typer.Option(
            None,
            "--type",
            "-t",
            metavar="TYPE",
            help="auto, f32, f16, bf16, q8_0 (converter) or a llama-quantize recipe such as Q4_K_M.",
        ),
        bits: int | None = typer.Option(
            None, "--bits", metavar="N", help="8 6 5 4 3 2 (GGUF recipe, docs/recipes.md) or a packed format's bit width."
        ),
        target_size: str | None = opt.target_size(),
        target_bpw: float | None = opt.target_bpw(),
        fmt: str = typer.Option("gguf", "--format", metavar="FORMAT", help="gguf, ct (compressed-tensors), mlx, gptq or awq."),
        group_size: int | None = typer.Option(
            None, "--group-size", metavar="N", help="Packed formats: weights per scale (default 128 ct/gptq/awq, 64 mlx)."
        ),
        max_shard_size: str | None = typer.Option(
            None, "--max-shard-size", metavar="SIZE", help="Packed formats: largest safetensors shard, e.g. 5GB (default)."
        ),
        recipe: dict[str, Any] = opt.RECIPE,
        calibration: dict[str, Any] = opt.CALIBRATION,
        strict: bool = opt.strict("Refuse (exit 8) before any compute if any tensor needs a fallback type."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the per-tensor plan and the output size; write nothing."
        ),
        verify: bool = typer.Option(
            False, "--verify", help="After writing, compare output and source on a text (exit 9 if worse)."
        ),
        max_kld: float | None = typer.Option(
            None, "--max-kld", metavar="X", help="--verify: largest mean KL divergence that passes (default 0.1)."
        ),
        eval_text: Path | None = typer.Option(
            None, "--eval-text", metavar="FILE", help="--verify: text file to evaluate on (default: the bundled text)."
        ),
        verify_chunks: int | None = typer.Option(
            None, "--verify-chunks", min=1, metavar="N", help="--verify: number of 512-token chunks (default 4)."
        ),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output."),
        json_out: bool = opt.json_out(),
        threads: int | None = opt.threads(),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Cache quantized tensors beside the output; after a crash the same command redoes only the rest.",
        ),
    ) -> None:
        import dataclasses

        from quantcli.engine import make_job, run
        from quantcli.errors import VerifyFailed
        from quantcli.hub import parse_hub_id, resolve_source

        # Every option combination is refused before a Hub download or any file is opened.
        job = make_job(
            source, output, out_type=out_type, bits=bits, format=fmt, group_size=group_size,
            max_shard_size=max_shard_size, **recipe, **calibration, verify=verify, max_kld=max_kld,
            eval_text=eval_text, verify_chunks=verify_chunks, force=force, threads=threads, resume=resume,
            strict=strict, dry_run=dry_run, target_size=target_size, target_bpw=target_bpw,
        )  # fmt: skip
        # A Hub id (org/name[@rev]) is downloaded first; its default output is named after the repo.
        hub = parse_hub_id(str(source)) if not source.exists() else None
        local = resolve_source(source)
        job = dataclasses.replace(job, source=str(local), output_stem=hub[0].split("/")[-1] if hub else None)
        try:
            result = run(job, progress=show_progress(json_out))
        except VerifyFailed as exc:
            result = getattr(exc, "result", None)
            if result is None:
                raise
            if not json_out:
                _summary(result)
                raise
            # One JSON document on stdout (the result, "ok": false, with the figures), the reason on stderr.
            print(json.dumps(result))
            err.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(int(exc.exit_code)) from None
        _warn_under_sampled(result)
        if json_out:
            print(json.dumps(result))
        elif result.get("dry_run"):
            _show_plan(result)
        else:
            _summary(result)


def _warn_under_sampled(result: dict) -> None:
    """One stderr line (with --json too) when calibration rounded some experts to nearest: they saw fewer
    calibration tokens than a matrix's input width (`calibration.experts`, docs/calibration.md)."""
    layers = (result.get("calibration") or {}).get("experts") or []
    rounded = {entry["layer"]: set().union(*entry["under_sampled"].values()) for entry in layers
               if entry["under_sampled"]}  # fmt: skip
    if rounded:
        n = sum(len(experts) for experts in rounded.values())
        print(  # plain: rich would wrap it at the terminal's width
            f"warning: {n} expert(s) in layer(s) {', '.join(map(str, rounded))} saw fewer calibration tokens "
            "than a matrix's input width and were rounded to nearest there (more --calib-samples; "
            "calibration.experts in --json)", file=sys.stderr,
        )  # fmt: skip


def _show_plan(doc: dict) -> None:
    """The --dry-run table: what `quantcli plan` shows, for any convert output."""
    from rich.table import Table

    title = f"{doc['source']} -> {doc['output']}"
    if doc.get("pipeline"):
        title += f" ({doc['pipeline']})"
    table = Table(title=title, title_justify="left")
    for column, justify in (("tensor", "left"), ("shape", "left"), ("from", "left"), ("type", "left"),
                            ("bytes", "right"), ("why", "left"), ("fallback", "left")):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=column in ("tensor", "shape", "bytes"))
    for t in doc["tensors"]:
        fallback = f"[yellow]{t['fallback_from']} -> {t['type']}[/]" if t.get("fell_back") else ""
        table.add_row(
            t["name"], "x".join(str(n) for n in t["shape"]), t["src_type"], t["type"], f"{t['bytes']:,}",
            t["reason"], fallback,
        )  # fmt: skip
    print_wide(table, 200)
    if doc["bytes_exact"]:
        hist = ", ".join(f"{k} {v}" for k, v in doc["tensor_types"].items())
        out.print(
            f"{doc['n_tensors']} tensors ({hist}); {doc['n_fallbacks']} fallback(s); {doc['parameters']:,} weights; "
            f"tensor data {doc['src_tensor_bytes']:,} -> {doc['tensor_bytes']:,} bytes, {doc['bits_per_weight']:.2f} bpw; "
            f"file {doc['bytes']:,} bytes; nothing written (--dry-run)"
        )
    else:
        out.print(
            f"{doc['n_tensors']} tensors; packed tensor data {doc['bytes']:,} bytes "
            f"(plus safetensors headers and small files); nothing written (--dry-run)"
        )


def _summary(result: dict) -> None:
    from rich.table import Table

    if result.get("format", "gguf") != "gguf":
        kept = result["n_tensors"] - result["n_quantized"]
        err.print(
            f"{result['output']}: {result['format']} {result['bits']}-bit, group {result['group_size']}, "
            f"{result['n_quantized']} quantized + {kept} kept tensors, "
            f"{len(result['files'])} files, {result['bytes']:,} bytes in {result['seconds']:.1f} s, "
            f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB"
        )
        for f in result["files"]:  # schema: [{name, bytes, sha256}] per file
            if isinstance(f, dict):
                out.print(f"sha256 {f['sha256']}  {f['name']} (whole file, {f['bytes']:,} bytes)", markup=False)
    else:
        fallbacks = result["fallbacks"]
        for f in fallbacks[:10]:
            err.print(f"[yellow]fallback[/] {f['name']}: {f['why']}")
        if len(fallbacks) > 10:
            err.print(f"[yellow]... and {len(fallbacks) - 10} more fallback(s)[/] (all in --json; --strict refuses them)")
        table = Table(title=f"{result['output']}", title_justify="left", min_width=len(str(result["output"])))
        table.add_column("type")
        table.add_column("tensors", justify="right")
        for qtype, count in result["tensor_types"].items():
            table.add_row(qtype, str(count))
        err.print(table)
        extra = ""
        if result["n_fallbacks"]:
            extra = f", {result['n_fallbacks']} fallback(s)"
        if result.get("bits_per_weight") is not None:
            extra += f", {result['bits_per_weight']:.2f} bpw"
        err.print(
            f"{result['architecture']} {result['file_type']} ({result.get('pipeline', '')}): "
            f"{result['n_tensors']} tensors{extra}, {result['parameters']:,} parameters, "
            f"{result['bytes']:,} bytes in {result['seconds']:.1f} s, "
            f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB\nsha256 (whole file) {result['sha256']}"
        )
    report = result.get("verify")
    if report:
        verdict = "[green]passed[/]" if report["passed"] else "[red]FAILED[/]"
        err.print(
            f"verify ({report['chunks']} x {report['n_ctx']} tokens of {report['text']}): "
            f"PPL source {report['ppl_source']:.3f}, output {report['ppl_output']:.3f} "
            f"(ratio {report['ppl_ratio']:.4f}); KLD mean {report['kld_mean']:.4f}, p99 {report['kld_p99']:.4f}; "
            f"top-1 {100 * report['top1_agreement']:.1f}%; gate mean KLD <= {report['max_kld']}: {verdict}"
        )
