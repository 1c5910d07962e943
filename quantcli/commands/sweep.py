"""`quantcli sweep MODEL`: convert to several recipes and size targets, score each against the model's F16."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from quantcli.commands import _options as opt

HELP = """Convert MODEL to each recipe (--types) and each size target (--targets), then measure every file
against the model's F16 with our runtime, exactly as `quantcli eval FILE --base F16` does: size, bits per
weight, PPL, mean and 99th-percentile KL-divergence, top-1 agreement. Writes the files, sweep.md (the
table), sweep.json and, with matplotlib installed (`pip install 'quantcli[plot]'`), sweep.png (size vs
mean KLD, llama.cpp recipes vs size targets, Pareto front marked) into the output directory.

MODEL is a Hugging Face model directory (its F16 GGUF is made first, as convert_hf_to_gguf.py --outtype
f16 writes it) or an F16/BF16/F32 GGUF file. Recipes are quantized from that F16, as llama-quantize would.
A target is a size (bytes, 80MB, 1.5GiB) or a recipe name from --types, meaning that recipe's exact size.

Examples:

* `quantcli sweep ./SmolLM2-135M --imatrix imatrix.gguf`
* `quantcli sweep smol-f16.gguf --types Q4_K_M,Q3_K_M --targets 80MB,Q4_K_M --json`
"""

DEFAULT_TYPES = "Q2_K,Q3_K_M,Q4_K_M,Q5_K_M,Q6_K,Q8_0"
DEFAULT_TARGETS = "Q3_K_M,Q4_K_M,Q6_K"


def register(app: typer.Typer) -> None:
    @app.command("sweep", help=HELP)
    def sweep(
        source: Path = typer.Argument(..., metavar="MODEL", help="HF model directory or F16/BF16/F32 GGUF."),
        types: str = typer.Option(DEFAULT_TYPES, "--types", metavar="T,T,...", help="llama-quantize recipes."),
        targets: str | None = typer.Option(
            None, "--targets", metavar="S,S,...",
            help=f"Sizes (80MB) or recipe names (that file's size); default: those of {DEFAULT_TARGETS} in --types.",
        ),  # fmt: skip
        imatrix: str | None = opt.imatrix(),
        eval_text: Path | None = typer.Option(
            None, "--eval-text", metavar="FILE", help="Text to score on (default: the shipped eval text)."
        ),
        chunks: int = typer.Option(4, "--chunks", min=1, metavar="N", help="Chunks to score."),
        ctx: int = opt.ctx(512, "Tokens per chunk (llama-perplexity -c)."),
        output: Path | None = typer.Option(
            None, "-o", "--output", metavar="DIR", help="Directory for the files (default ./<model>-sweep)."
        ),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing files in DIR."),
        json_out: bool = opt.json_out(),
        threads: int | None = opt.threads(),
    ) -> None:
        from quantcli.console import err, json_doc, print_json
        from quantcli.errors import InputMissing, UsageError

        recipes = [t.strip() for t in types.split(",") if t.strip()]
        if targets is None:
            targets = ",".join(t for t in DEFAULT_TARGETS.split(",") if t in [r.upper() for r in recipes])
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        if not recipes and not wanted:
            raise UsageError("--types and --targets are both empty: nothing to sweep")
        for name in wanted:
            if not name[0].isdigit() and name.upper() not in [r.upper() for r in recipes]:
                raise UsageError(f"--targets {name}: not a size and not one of --types")
        if eval_text is not None and not eval_text.is_file():
            raise InputMissing(f"--eval-text {eval_text} does not exist")
        say = (lambda msg: None) if json_out else (lambda msg: err.print(msg, highlight=False))
        result = run_sweep(source, recipes, wanted, imatrix, eval_text, chunks, ctx, output, force, threads, say)
        if json_out:
            print_json(json_doc("sweep", True, **result))
        else:
            print(result["table"])
            if result["plot"] is None:
                err.print(f"no plot: {result['plot_missing']}")


def run_sweep(
    source: Path, recipes: list[str], targets: list[str], imatrix: str | None, eval_text: Path | None,
    chunks: int, ctx: int, output: Path | None, force: bool, threads: int | None, say: Any,
) -> dict[str, Any]:  # fmt: skip
    """Every job is checked (make_job) before the first conversion; then convert, quantize, score."""
    import gc

    from quantcli.engine import make_job, run
    from quantcli.engine.target import model_stem, parse_size
    from quantcli.errors import InputMissing
    from quantcli.loaders.gguf import is_gguf_file
    from quantcli.runtime import Model, load_tokenizer, open_source
    from quantcli.runtime.evaluate import base_log_probs, kl_divergence, plan_chunks
    from quantcli.runtime.textdata import read_text

    started = time.perf_counter()
    if not source.exists():
        raise InputMissing(f"{source} does not exist")
    stem = model_stem(source) if not is_gguf_file(source) else source.stem
    out_dir = output or Path.cwd() / f"{stem}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = source if is_gguf_file(source) else out_dir / f"{stem}-F16.gguf"
    make = []  # (label, kind, job), each checked before any work
    for recipe in recipes:
        job = make_job(f16, out_dir / f"{stem}-{recipe.upper()}.gguf",
                       out_type=recipe, imatrix=imatrix, recipe_only=True, command="quantize", force=force,
                       threads=threads)  # fmt: skip
        make.append((job.target.scheme_label, "recipe", job))
    for target in targets:
        if target[0].isdigit():
            parse_size(target, "--targets")
    if not is_gguf_file(source):
        say(f"F16 of {source} ...")
        if force or not f16.exists():
            run(make_job(source, f16, out_type="f16", force=True, threads=threads))
    body, text_name = read_text(eval_text)
    base_source = open_source(f16)
    plan = plan_chunks(load_tokenizer(f16, base_source), body, ctx, chunks)  # a too-short text fails here
    rows: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    for label, _, job in make:
        say(f"{label} ...")
        done = run(job)
        sizes[label.upper()] = done["bytes"]
        rows.append({"label": label, "kind": "recipe", "file": done["output"], "file_type": done["file_type"]})
    for target in targets:
        size = sizes[target.upper()] if not target[0].isdigit() else parse_size(target, "--targets")
        path = out_dir / f"{stem}-target-{size}B.gguf"
        say(f"--target-size {size} ({target}) ...")
        done = run(make_job(f16, path, target_size=size, imatrix=imatrix, recipe_only=True, command="quantize",
                            force=True, threads=threads), progress=False)  # fmt: skip
        rows.append({"label": f"target {target}", "kind": "target", "file": done["output"],
                     "file_type": done["file_type"], "target_size": size})  # fmt: skip
    say(f"F16 logits, {plan.n_chunks} chunks ...")
    coded = list(base_log_probs(Model(base_source), plan))
    del base_source
    gc.collect()
    for row in rows:
        say(f"scoring {row['label']} ...")
        figures = kl_divergence(Model(open_source(row["file"])), plan, coded)
        gc.collect()
        size = Path(row["file"]).stat().st_size
        row.update({
            "bytes": size, "ppl": figures["ppl"], "ppl_base": figures["ppl_base"], "ppl_ratio": figures["ppl_ratio"],
            "kld_mean": figures["kld_mean"], "kld_p99": figures["kld_p99"], "top1_agreement": figures["same_top"],
        })  # fmt: skip
    _mark_pareto(rows)
    table = _table(rows, str(f16), text_name, plan.n_chunks, ctx)
    (out_dir / "sweep.md").write_text(table + "\n", encoding="utf-8")
    doc = {"source": str(source), "base": str(f16), "text": text_name, "chunks": plan.n_chunks, "n_ctx": ctx,
           "imatrix": imatrix, "results": rows}  # fmt: skip
    (out_dir / "sweep.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    plot, missing = _plot(rows, out_dir / "sweep.png", stem)
    doc.update({"table": table, "plot": plot, "plot_missing": missing, "output": str(out_dir),
                "seconds": round(time.perf_counter() - started, 3)})  # fmt: skip
    return doc


def _mark_pareto(rows: list[dict[str, Any]]) -> None:
    """A file is on the Pareto front when no other file is at most its size with a lower mean KLD."""
    for row in rows:
        row["pareto"] = not any(
            o is not row and o["bytes"] <= row["bytes"] and o["kld_mean"] < row["kld_mean"] for o in rows
        )


def _table(rows: list[dict[str, Any]], base: str, text: str, chunks: int, ctx: int) -> str:
    lines = [
        f"Against {base}, {chunks} x {ctx} tokens of {text} (quantcli eval --base); * = Pareto front.",
        "",
        "| file | kind | file type | bytes | PPL | PPL ratio | mean KLD | p99 KLD | top-1 |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in sorted(rows, key=lambda r: r["bytes"]):
        lines.append(
            f"| {r['label']}{' *' if r['pareto'] else ''} | {r['kind']} | {r['file_type']} | {r['bytes']:,} "
            f"| {r['ppl']:.4f} | {r['ppl_ratio']:.4f} | {r['kld_mean']:.5f} | {r['kld_p99']:.4f} "
            f"| {100 * r['top1_agreement']:.2f}% |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> tuple[str | None, str | None]:
    try:
        import matplotlib
    except ModuleNotFoundError:
        return None, "matplotlib is not installed (pip install 'quantcli[plot]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for kind, marker, colour, label in (("recipe", "o", "tab:blue", "llama.cpp recipes"),
                                        ("target", "s", "tab:orange", "quantcli --target-size")):  # fmt: skip
        pts = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["bytes"] / 1e6 for r in pts], [r["kld_mean"] for r in pts], marker=marker, c=colour,
                   label=label, zorder=3)  # fmt: skip
        for r in pts:  # targets labelled below their point: a target at a recipe's size sits on top of it
            ax.annotate(r["label"].removeprefix("target "), (r["bytes"] / 1e6, r["kld_mean"]),
                        textcoords="offset points", xytext=(5, 4 if kind == "recipe" else -12), fontsize=8,
                        color=colour)  # fmt: skip
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["bytes"])
    ax.plot([r["bytes"] / 1e6 for r in front], [r["kld_mean"] for r in front], "k--", lw=1, label="Pareto front",
            zorder=2)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL-divergence vs F16 (log scale)")
    ax.set_title(f"{title}: size vs quality")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path), None
