"""Quality at equal size: our --target-size files vs llama-quantize recipes with an imatrix, scored by
llama.cpp's own llama-perplexity --kl-divergence against the F16 of the same model (issue #15).

Model: the off-grid SmolLM2-135M (scripts/make_smollm2_fixture.py --off-grid), F16 GGUF by
`quantcli convert --type f16` (byte-identical to convert_hf_to_gguf.py --outtype f16).
Texts (target_texts): the calibration text is the first half of the Python documentation's topic pages
shipped with CPython (pydoc_data.topics, sorted by key; PSF licence); the evaluation text is
quantcli/data/eval.txt (prose) followed by the second half of those pages, cut to EVAL_CHUNKS x 512
tokens plus a margin. The two share no text.
Per recipe (Q3_K_M, Q4_K_M, Q6_K): llama-imatrix on the calibration text (CALIB_CHUNKS x 512), llama-quantize
RECIPE with that imatrix, then `quantcli quantize --target-size <that file's exact size> --imatrix` with the
same imatrix. Markdown on stdout, progress on stderr; `--json FILE` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from _benchlib import cache_dir  # noqa: E402
from reference import run_tool  # noqa: E402

RECIPES = ("Q3_K_M", "Q4_K_M", "Q6_K")
GOALS = {"Q4_K_M": 0.70, "Q3_K_M": 0.65, "Q6_K": 0.75}  # issue #15: ours / llama-quantize's mean KLD
EVAL_CHUNKS = 16
CALIB_CHUNKS = 64
N_CTX = 512
THREADS = 2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def target_texts(directory: Path) -> tuple[Path, Path]:
    """(calibration, evaluation) text files, written into `directory` (see the module docstring)."""
    import pydoc_data.topics as topics

    pages = [topics.topics[k] for k in sorted(topics.topics)]
    half = len(pages) // 2
    calib = directory / "calib.txt"
    calib.write_text("\n\n".join(pages[:half]), encoding="utf-8")
    prose = (REPO / "quantcli" / "data" / "eval.txt").read_text(encoding="utf-8")
    # ~4 characters a token: enough text for EVAL_CHUNKS chunks with a margin, whole pages only
    second, need = [], EVAL_CHUNKS * N_CTX * 5 - len(prose)
    for page in pages[half:]:
        if need <= 0:
            break
        second.append(page)
        need -= len(page)
    evaluation = directory / "eval.txt"
    evaluation.write_text(prose + "\n\n" + "\n\n".join(second), encoding="utf-8")
    return calib, evaluation


def quantcli(*args: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "quantcli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"quantcli {args}: {proc.stderr[-2000:]}")
    return proc


def tool(name: str, *args: object) -> str:
    proc = run_tool(name, *args)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def kld_figures(log: str) -> dict[str, float]:
    def number(pattern: str) -> float:
        m = re.search(pattern, log, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"no {pattern!r} in llama-perplexity's output:\n{log[-2000:]}")
        return float(m.group(1))

    return {
        "kld_mean": number(r"^Mean\s+KLD:\s+([0-9.]+)"),
        "kld_p99": number(r"^99\.0%\s+KLD:\s+([0-9.]+)"),
        "top1": number(r"^Same top p:\s+([0-9.]+)") / 100,
        "ppl_ratio": number(r"^Mean PPL\(Q\)/PPL\(base\)\s+:\s+([0-9.]+)"),
        "ppl": number(r"^Mean PPL\(Q\)\s+:\s+([0-9.]+)"),
    }


def score(model: Path, base: Path, evaluation: Path) -> dict[str, float]:
    """llama-perplexity's figures for `model`, kept in scores.json beside it by content (size, sha256 of the
    whole file and the size of the base) so a rerun scores only files that changed."""
    import hashlib

    cache = model.parent / "scores.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    with open(model, "rb") as fh:
        key = f"v2:{model.name}:{model.stat().st_size}:{hashlib.sha256(fh.read()).hexdigest()}:{base.stat().st_size}"
    if key not in known:
        known[key] = _score(model, base, evaluation)
        cache.write_text(json.dumps(known, indent=1))
    return known[key]


def _score(model: Path, base: Path, evaluation: Path) -> dict[str, float]:
    # the logger sometimes loses its tail at exit on a loaded machine (tests/reference.py): retry
    for _ in range(5):
        log = tool("llama-perplexity", "-m", model, "-f", evaluation, "--kl-divergence-base", base,
                   "--kl-divergence", "-c", N_CTX, "--chunks", EVAL_CHUNKS, "-t", THREADS, "-b", N_CTX)  # fmt: skip
        if "Same top p" in log:
            return kld_figures(log)
    return kld_figures(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--method", choices=("gptq", "awq", "awq-gptq"),
                        help="ours also calibrated with this method: `quantcli convert MODEL --target-size ... "
                             "--method M --calib <the calibration text>` from the HF checkpoint")
    parser.add_argument("--on-grid", action="store_true",
                        help="SmolLM2 as shipped (weights on a Q4_1 grid) instead of the off-grid variant")
    parser.add_argument("--reuse", action="store_true",
                        help="keep our --method files already made by an earlier run (they take minutes each)")
    parser.add_argument("--calib-samples", type=int, default=32,
                        help="--method's calibration windows of 512 tokens (default 32)")
    args = parser.parse_args()
    work = cache_dir("bench-target-ongrid" if args.on_grid else "bench-target")
    variant = [] if args.on_grid else ["--off-grid"]
    model = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "make_smollm2_fixture.py"), *variant,
                                 "--print-path"], check=True, capture_output=True, text=True).stdout.split()[-1])  # fmt: skip
    calib, evaluation = target_texts(work)
    f16 = work / f"{'ongrid' if args.on_grid else 'offgrid'}-f16.gguf"
    if not f16.exists():
        _log("F16 ...")
        quantcli("convert", model, "--type", "f16", "-o", f16)
    imatrix = work / "imatrix-calib.gguf"
    if not imatrix.exists():
        _log("llama-imatrix on the calibration text ...")
        tool("llama-imatrix", "-m", f16, "-f", calib, "-o", imatrix, "-c", N_CTX, "--chunks", CALIB_CHUNKS,
             "-t", THREADS, "-b", N_CTX)  # fmt: skip
    base = work / "f16-eval.kld"
    if not base.exists():
        _log("F16 logits on the evaluation text ...")
        tool("llama-perplexity", "-m", f16, "-f", evaluation, "--kl-divergence-base", base, "-c", N_CTX,
             "--chunks", EVAL_CHUNKS, "-t", THREADS, "-b", N_CTX)  # fmt: skip
    rows = []
    full: list[tuple[str, list[tuple[str, int, dict[str, float]]]]] = []
    for recipe in args.recipes.split(","):
        ref = work / f"llama-{recipe}-imatrix.gguf"
        tool("llama-quantize", "--imatrix", imatrix, f16, ref, recipe, THREADS)
        size = ref.stat().st_size
        started = time.perf_counter()
        if args.method:
            ours = work / f"quantcli-target-{recipe}-{args.method}.gguf"
            if not (args.reuse and ours.exists()):
                quantcli("convert", model, "-o", ours, "--target-size", size, "--imatrix", imatrix, "--force",
                         "--method", args.method, "--calib", calib, "--calib-samples", args.calib_samples,
                         "--calib-seq-len", N_CTX)  # fmt: skip
        else:
            ours = work / f"quantcli-target-{recipe}.gguf"
            quantcli("quantize", f16, ours, "--target-size", size, "--imatrix", imatrix, "--force")
        seconds = time.perf_counter() - started
        _log(f"{recipe}: {size} bytes; ours {ours.stat().st_size} bytes in {seconds:.0f} s; scoring ...")
        ref_fig, our_fig = score(ref, base, evaluation), score(ours, base, evaluation)
        plain = work / f"llama-{recipe}.gguf"
        tool("llama-quantize", f16, plain, recipe, THREADS)
        files = [("llama-quantize", plain), ("llama-quantize + imatrix", ref)]
        if args.method:
            rtn = work / f"quantcli-target-{recipe}.gguf"
            quantcli("quantize", f16, rtn, "--target-size", size, "--imatrix", imatrix, "--force")
            files.append(("quantcli --target-size --imatrix", rtn))
        files.append((f"quantcli --target-size --imatrix{' --method ' + args.method if args.method else ''}", ours))
        full.append((recipe, [(label, f.stat().st_size, score(f, base, evaluation)) for label, f in files]))
        rows.append({"recipe": recipe, "bytes": size, "ours_bytes": ours.stat().st_size, "llama": ref_fig,
                     "ours": our_fig, "ratio": our_fig["kld_mean"] / ref_fig["kld_mean"], "goal": GOALS[recipe],
                     "ours_seconds": round(seconds, 1), "method": args.method})  # fmt: skip
        _log(f"  llama {ref_fig}\n  ours  {our_fig}")
    print("## Size targets: mean KLD at llama-quantize's file sizes (quantcli --target-size vs recipe + imatrix)\n")
    method = (f"; ours with `--method {args.method}` on {args.calib_samples} x {N_CTX} tokens of the calibration "
              "text") if args.method else ""
    print(f"{'SmolLM2-135M as shipped (on its Q4_1 grid)' if args.on_grid else 'Off-grid SmolLM2-135M'}; llama-perplexity --kl-divergence against its F16, {EVAL_CHUNKS} x {N_CTX} tokens "
          f"of the evaluation text; imatrix: llama-imatrix, {CALIB_CHUNKS} x {N_CTX} tokens of the calibration text "
          f"(scripts/bench_target.py{' --method ' + args.method if args.method else ''}){method}.\n")  # fmt: skip
    print("| size of | bytes (llama / ours) | mean KLD llama-quantize + imatrix | mean KLD ours | ours / llama "
          "| goal | p99 KLD llama / ours | top-1 llama / ours | PPL ratio llama / ours |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        a, b = r["llama"], r["ours"]
        print(f"| {r['recipe']} | {r['bytes']:,} / {r['ours_bytes']:,} | {a['kld_mean']:.5f} | {b['kld_mean']:.5f} "
              f"| {r['ratio']:.3f} | ≤ {r['goal']:.2f} | {a['kld_p99']:.4f} / {b['kld_p99']:.4f} "
              f"| {100 * a['top1']:.2f}% / {100 * b['top1']:.2f}% | {a['ppl_ratio']:.4f} / {b['ppl_ratio']:.4f} |")
    from gguf import GGUFReader

    parameters = sum(int(t.n_elements) for t in GGUFReader(f16).tensors)
    print("\nEvery file at each size (bits per weight: the whole file's bits over the model's "
          f"{parameters:,} parameters; PPL: llama-perplexity's of the file on the evaluation text):\n")
    print("| size of | file | bytes | bpw | PPL | mean KLD | KLD / llama-quantize + imatrix | p99 KLD | top-1 |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for recipe, entries in full:
        reference = entries[1][2]["kld_mean"]
        for label, nbytes, fig in entries:
            print(f"| {recipe} | {label} | {nbytes:,} | {8 * nbytes / parameters:.3f} | {fig['ppl']:.3f} "
                  f"| {fig['kld_mean']:.5f} | {fig['kld_mean'] / reference:.3f} | {fig['kld_p99']:.4f} "
                  f"| {100 * fig['top1']:.2f}% |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "files": full}, indent=1))


if __name__ == "__main__":
    main()
