#!/usr/bin/env python3
"""Calibrated quantization measured against llm-compressor and llama.cpp+imatrix (docs/calibration.md).

One run, one machine. Quality is llama-perplexity --kl-divergence against the F16 GGUF (llama.cpp's
convert_hf_to_gguf.py) of the same source model, on quantcli/data/eval.txt in 512-token chunks. Packed
checkpoints (ours and llm-compressor's) are turned into F16 GGUFs by that same converter, which reads
compressed-tensors and dequantizes it, so every row goes through llama.cpp's own reader. Calibration is the
bundled quantcli/data/calib.txt for everyone: quantcli's windows (`calibration_samples`) are handed to
llm-compressor's `oneshot` as a dataset of input_ids, and llama-imatrix reads the same text with the same
chunking (`-c 512 --chunks N`).

Sections: `ct` (4-bit symmetric group-64 compressed-tensors: RTN, llm-compressor GPTQ, ours), `cost` (our
GPTQ and llm-compressor's started together, each pinned to one core; then our AWQ and AWQ + GPTQ), `gguf`
(llama-quantize + llama-imatrix vs `--method gptq` on the GGML grids), `memory` (our peak RSS on a 16- and a
32-layer synthetic model). Every process runs with OMP/OpenBLAS/MKL threads at --threads, one at a time.
Progress on stderr, Markdown on stdout (and --out).

    python scripts/measure_calibration.py --out /tmp/calibration.md               # the off-grid SmolLM2
    python scripts/measure_calibration.py --model ~/.cache/quantcli/fixtures/SmolLM2-135M --sections ct
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from _benchlib import cache_dir, timed  # noqa: E402
from reference import convert_with_llamacpp, llmcompressor_python, tool, tool_env  # noqa: E402

EVAL_TEXT = REPO / "quantcli" / "data" / "eval.txt"
CALIB_TEXT = REPO / "quantcli" / "data" / "calib.txt"
# issue #14's targets: our KLD over the reference's
CT_TARGET = 0.95
GGUF_TARGETS = {"Q4_K_M": 0.85, "Q3_K_M": 0.75, "Q4_0": 0.75}


@dataclass
class Run:
    """One produced file and what producing it cost."""

    path: Path
    wall: float
    rss: int
    command: str


@dataclass
class Score:
    ppl: float
    kld: float
    p99: float
    top1: float


class Bench:
    def __init__(self, model: Path, work: Path, threads: int, samples: int, seq_len: int, chunks: int) -> None:
        self.model, self.work, self.threads = model, work, threads
        self.samples, self.seq_len, self.chunks = samples, seq_len, chunks
        self.env = dict(tool_env(), OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                        MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        self.f16 = self.run_once("f16.gguf", self.convert_f16, "convert_hf_to_gguf.py MODEL --outtype f16").path
        self.base_kld = work / "f16.kld"
        if not self.base_kld.exists():
            self.perplexity(self.f16, ["--kl-divergence-base", str(self.base_kld)])

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

    def run_once(self, name: str, make: object, command: str) -> Run:
        """`make(out) -> (wall, rss)` once; its cost is kept beside the output so a rerun reuses both."""
        out = self.work / name
        meta = self.work / (name + ".json")
        if not meta.exists():
            self.log(f"making {name}: {command}")
            if out.is_dir():
                shutil.rmtree(out)
            out.unlink(missing_ok=True)
            wall, rss = make(out)  # type: ignore[operator]
            meta.write_text(json.dumps({"wall": wall, "rss": rss, "command": command}))
        data = json.loads(meta.read_text())
        return Run(out, data["wall"], data["rss"], data["command"])

    def convert_f16(self, out: Path, model: Path | None = None) -> tuple[float, int]:
        started = time.perf_counter()
        proc = convert_with_llamacpp(model or self.model, out, "f16")
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
        return time.perf_counter() - started, 0

    def timed(self, cmd: list[str]) -> tuple[float, int]:
        wall, rss, _ = timed([str(c) for c in cmd], REPO, self.env)
        return wall, rss

    def quantcli(self, *args: object) -> list[str]:
        return [sys.executable, "-m", "quantcli", *[str(a) for a in args]]

    def perplexity(self, gguf: Path, extra: list[str]) -> str:
        cmd = [str(tool("llama-perplexity")), "-m", str(gguf), "-f", str(EVAL_TEXT), "-c", "512",
               "--chunks", str(self.chunks), "-t", "2", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-perplexity failed on {gguf}:\n{proc.stderr[-3000:]}")
        return proc.stdout + proc.stderr

    def score(self, gguf: Path) -> Score:
        cache = gguf.with_name(gguf.name + ".score.json")
        if not cache.exists():
            self.log(f"KLD of {gguf.name}")
            log = self.perplexity(gguf, ["--kl-divergence-base", str(self.base_kld), "--kl-divergence"])

            def number(pattern: str) -> float:
                found = re.search(pattern, log)
                if found is None:
                    raise RuntimeError(f"no {pattern!r} in llama-perplexity's output:\n{log[-3000:]}")
                return float(found.group(1))

            cache.write_text(json.dumps({
                "ppl": number(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)"),
                "kld": number(r"Mean\s+KLD:\s+([0-9.]+)"),
                "p99": number(r"99\.0%\s+KLD:\s+([0-9.]+)"),
                "top1": number(r"Same top p:\s+([0-9.]+)"),
                "chunks": len(re.findall(r"^\s*\d+\s+\d+\.\d+\s+", log, re.MULTILINE)),
            }))
        data = json.loads(cache.read_text())
        return Score(data["ppl"], data["kld"], data["p99"], data["top1"])

    def packed_gguf(self, packed: Run) -> Path:
        """The packed checkpoint dequantized to F16 by llama.cpp's converter."""
        name = packed.path.name + ".f16.gguf"
        return self.run_once(name, lambda out: self.convert_f16(out, packed.path),
                             f"convert_hf_to_gguf.py {packed.path.name} --outtype f16").path

    def windows(self) -> Path:
        """quantcli's calibration windows of calib.txt, for llm-compressor."""
        out = self.work / f"calib-{self.samples}x{self.seq_len}.npy"
        if not out.exists():
            from quantcli.runtime import load_tokenizer
            from quantcli.runtime.calibrate import calibration_samples, read_calibration_text

            tokens = calibration_samples(load_tokenizer(self.model), read_calibration_text([CALIB_TEXT]).text,
                                         self.samples, self.seq_len)
            np.save(out, tokens)
        return out


def mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def calib_args(bench: Bench) -> list[str]:
    return ["--calib", str(CALIB_TEXT), "--calib-samples", str(bench.samples), "--calib-seq-len", str(bench.seq_len)]


def section_ct(bench: Bench, rows: list[str]) -> list[str]:
    ct = ["--format", "ct", "--bits", "4", "--group-size", "64"]
    ours: list[tuple[str, str, list[str]]] = [
        ("quantcli RTN", "ct-rtn", []),
        ("quantcli GPTQ --damp 0.01 (act-order)", "ct-gptq", ["--method", "gptq", *calib_args(bench), "--damp", "0.01"]),
        ("quantcli GPTQ --no-act-order", "ct-gptq-noact",
         ["--method", "gptq", *calib_args(bench), "--no-act-order"]),
        ("quantcli GPTQ defaults (act-order, damp 0.1)", "ct-gptq-damp0.1", ["--method", "gptq", *calib_args(bench)]),
        ("quantcli AWQ", "ct-awq", ["--method", "awq", *calib_args(bench)]),
        ("quantcli AWQ + GPTQ (defaults)", "ct-awq-gptq", ["--method", "awq-gptq", *calib_args(bench)]),
    ]
    runs: list[tuple[str, Run]] = []
    ours = [row for row in ours if row[1] in rows]
    for label, name, extra in ours:
        cmd = bench.quantcli("convert", bench.model, *ct, *extra, "-o", bench.work / name)
        shown = " ".join(["quantcli convert MODEL", *ct, *extra]).replace(str(CALIB_TEXT), "calib.txt")
        runs.append((label, bench.run_once(name, lambda out, cmd=cmd: bench.timed(cmd), shown)))
    windows = bench.windows()
    llmc = [("llm-compressor GPTQ (defaults: actorder static, damp 0.01)", "llmc-static", ["--actorder", "static"]),
            ("llm-compressor GPTQ actorder none", "llmc-none", ["--actorder", "none"]),
            ("llm-compressor GPTQ damp 0.1", "llmc-damp0.1", ["--damp", "0.1"])]
    llmc = [row for row in llmc if row[1] in rows or row[1] == "llmc-static"]
    for label, name, extra in llmc:
        script = REPO / "scripts" / "_llmc_oneshot.py"
        cmd = [str(llmcompressor_python()), str(script), str(bench.model), str(windows), "OUT",
               "--group-size", "64", *extra]
        shown = f"venv-llmc/bin/python scripts/_llmc_oneshot.py MODEL calib-{windows.stem[6:]}.npy OUT " + " ".join(
            ["--group-size", "64", *extra])
        runs.append((label, bench.run_once(
            name, lambda out, cmd=cmd: bench.timed([c if c != "OUT" else str(out) for c in cmd]), shown)))

    scores = {label: bench.score(bench.packed_gguf(run)) for label, run in runs}
    reference = scores[llmc[0][0]].kld
    lines = [
        "| method | PPL | mean KLD | KLD / llm-compressor default | p99 KLD | top-1 | command |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for label, run in runs:
        s = scores[label]
        lines.append(f"| {label} | {s.ppl:.3f} | {s.kld:.5f} | {s.kld / reference:.3f} | {s.p99:.4f} | "
                     f"{s.top1:.2f} % | `{run.command}` |")
    by_name = {name: scores[label].kld for label, name, _ in ours}
    if "ct-gptq-damp0.1" in by_name:
        ratio = by_name["ct-gptq-damp0.1"] / reference
        lines.append("")
        lines.append(f"Target: quantcli GPTQ (defaults) <= {CT_TARGET} x llm-compressor's default KLD: "
                     f"{ratio:.3f} ({'met' if ratio <= CT_TARGET else 'NOT met'}).")
    if {"ct-awq-gptq", "ct-awq", "ct-gptq-damp0.1"} <= by_name.keys():
        alone = min(by_name["ct-awq"], by_name["ct-gptq-damp0.1"])
        lines.append(f"AWQ + GPTQ together vs the better of either alone: {by_name['ct-awq-gptq']:.5f} vs "
                     f"{alone:.5f} ({'beats both' if by_name['ct-awq-gptq'] < alone else 'does NOT beat both'}).")
    lines.append("")
    lines.append("Cost of the same runs (whole process: start-up, model load, calibration forward, GPTQ, writing):")
    lines.append("")
    lines.append("| method | wall s | peak RSS MiB | wall / llm-compressor default |")
    lines.append("|---|--:|--:|--:|")
    ref_wall = dict(runs)[llmc[0][0]].wall
    for label, run in runs:
        lines.append(f"| {label} | {run.wall:.0f} | {mib(run.rss)} | {run.wall / ref_wall:.2f} |")
    return lines


def section_gguf(bench: Bench, types: list[str], ours_imatrix: bool, skip_damp001: bool) -> list[str]:
    chunks = bench.samples
    imatrix = bench.run_once(
        "imatrix.gguf",
        lambda out: bench.timed([tool("llama-imatrix"), "-m", bench.f16, "-f", CALIB_TEXT, "-c", bench.seq_len,
                                 "--chunks", chunks, "-t", bench.threads, "-o", out]),
        f"llama-imatrix -m F16.gguf -f calib.txt -c {bench.seq_len} --chunks {chunks}",
    )
    bf16 = bench.run_once("bf16.gguf", lambda out: _convert(bench, out, "bf16"),
                          "convert_hf_to_gguf.py MODEL --outtype bf16")
    lines = [
        "| type | method | bytes | PPL | mean KLD | KLD / llama-quantize+imatrix | target | p99 KLD | top-1 | wall s "
        "| command |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for qtype in types:
        rows: list[tuple[str, Run]] = []
        ref = bench.run_once(
            f"llama-{qtype}-imatrix.gguf",
            lambda out, q=qtype: bench.timed([tool("llama-quantize"), "--imatrix", imatrix.path, bf16.path, out, q,
                                              bench.threads]),
            f"llama-quantize --imatrix imatrix.gguf BF16.gguf OUT {qtype}",
        )
        rows.append(("llama-quantize + llama-imatrix", ref))
        plain = bench.run_once(
            f"llama-{qtype}.gguf",
            lambda out, q=qtype: bench.timed([tool("llama-quantize"), bf16.path, out, q, bench.threads]),
            f"llama-quantize BF16.gguf OUT {qtype}",
        )
        rows.append(("llama-quantize, no imatrix", plain))
        variants: list[tuple[str, str, list[object]]] = [
            ("quantcli --method gptq --damp 0.01", f"ours-{qtype}-gptq.gguf", ["--method", "gptq", "--damp", "0.01"]),
            ("quantcli --method gptq (default damp 0.1)", f"ours-{qtype}-gptq-d01.gguf", ["--method", "gptq"]),
            ("quantcli --method awq-gptq", f"ours-{qtype}-awqgptq.gguf", ["--method", "awq-gptq"]),
        ]
        if skip_damp001:
            variants = variants[1:]
        if ours_imatrix:
            variants.append(("quantcli --method gptq --imatrix (llama-imatrix's)", f"ours-{qtype}-gptq-imatrix.gguf",
                             ["--method", "gptq", "--imatrix", imatrix.path]))
        for label, name, extra in variants:
            cmd = bench.quantcli("convert", bench.model, "--type", qtype, *extra, *calib_args(bench), "-o", "OUT")
            shown = " ".join(["quantcli convert MODEL --type", qtype, *[str(e) for e in extra], *calib_args(bench)])
            shown = shown.replace(str(CALIB_TEXT), "calib.txt").replace(str(imatrix.path), "imatrix.gguf")
            rows.append((label, bench.run_once(
                name, lambda out, cmd=cmd: bench.timed([c if c != "OUT" else str(out) for c in cmd]), shown)))
        reference = bench.score(ref.path).kld
        for label, run in rows:
            s = bench.score(run.path)
            ratio = s.kld / reference
            target = GGUF_TARGETS.get(qtype)
            verdict = "" if label.startswith("llama") or target is None else (
                f"<= {target} ({'met' if ratio <= target else 'NOT met'})")
            lines.append(f"| {qtype} | {label} | {run.path.stat().st_size:,} | {s.ppl:.3f} | {s.kld:.5f} | "
                         f"{ratio:.3f} | {verdict} | {s.p99:.4f} | {s.top1:.2f} % | {run.wall:.0f} | "
                         f"`{run.command}` |")
    lines.append("")
    lines.append(f"llama-imatrix on the F16 GGUF: {imatrix.wall:.0f} s. Wall times of llama-quantize exclude the "
                 "BF16 conversion before it; quantcli's include its calibration forward.")
    return lines


def section_cost(bench: Bench, with_awq: bool) -> list[str]:
    """Wall time and peak RSS of our GPTQ and llm-compressor's, started together, each pinned to its own core
    (`taskset`, 1 BLAS/OpenMP thread each), so both see the same machine at the same moment; then our AWQ and
    AWQ + GPTQ the same way, side by side. Every output is also scored."""
    from concurrent.futures import ThreadPoolExecutor

    ct = ["--format", "ct", "--bits", "4", "--group-size", "64"]
    windows = bench.windows()
    script = REPO / "scripts" / "_llmc_oneshot.py"
    pairs = [
        [("quantcli GPTQ (defaults)", "cost-ours-gptq",
          bench.quantcli("convert", bench.model, *ct, "--method", "gptq", *calib_args(bench), "-o", "OUT")),
         ("llm-compressor GPTQ (defaults)", "cost-llmc-gptq",
          [str(llmcompressor_python()), str(script), str(bench.model), str(windows), "OUT", "--group-size", "64",
           "--actorder", "static"])],
        [("quantcli AWQ", "cost-ours-awq",
          bench.quantcli("convert", bench.model, *ct, "--method", "awq", *calib_args(bench), "-o", "OUT")),
         ("quantcli AWQ + GPTQ", "cost-ours-awq-gptq",
          bench.quantcli("convert", bench.model, *ct, "--method", "awq-gptq", *calib_args(bench), "-o", "OUT"))],
    ]
    runs: list[tuple[str, Run]] = []
    for pair in pairs if with_awq else pairs[:1]:
        def make(core: int, name: str, cmd: list[str]) -> Run:
            pinned = ["taskset", "-c", str(core), *cmd]
            shown = " ".join(cmd).replace(str(bench.model), "MODEL").replace(str(REPO) + "/", "")
            return bench.run_once(name, lambda out: bench.timed([c if c != "OUT" else str(out) for c in pinned]),
                                  f"taskset -c {core} {shown}")

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(make, core, name, cmd) for core, (_, name, cmd) in enumerate(pair)]
            runs += [(label, future.result()) for (label, _, _), future in zip(pair, futures, strict=True)]
    ref = dict(runs)["llm-compressor GPTQ (defaults)"]
    lines = ["| method | wall s | wall / llm-compressor | peak RSS MiB | RSS / llm-compressor | mean KLD | p99 KLD |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for label, run in runs:
        s = bench.score(bench.packed_gguf(run))
        lines.append(f"| {label} | {run.wall:.0f} | {run.wall / ref.wall:.2f} | {mib(run.rss)} | "
                     f"{run.rss / ref.rss:.2f} | {s.kld:.5f} | {s.p99:.4f} |")
    lines += ["", "Commands (OUT: the output directory):", ""]
    lines += [f"- {label}: `{run.command}`" for label, run in runs]
    return lines


def _convert(bench: Bench, out: Path, outtype: str) -> tuple[float, int]:
    started = time.perf_counter()
    proc = convert_with_llamacpp(bench.model, out, outtype)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, 0


def synthetic_model(out: Path, n_layer: int, tokenizer_from: Path) -> Path:
    """A random Llama with SmolLM2's widths (576 hidden, 1536 FFN, 9/3 heads, 49152 vocab) and `n_layer`
    layers, with SmolLM2's tokenizer files."""
    from tiny_models import make_tiny_llama

    if not (out / "config.json").exists():
        make_tiny_llama(out, layers=n_layer, hidden=576, ff=1536, heads=9, kv_heads=3, vocab=49152)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_from / name).exists():
                shutil.copy2(tokenizer_from / name, out / name)
    return out


def section_memory(bench: Bench) -> list[str]:
    lines = ["| layers | parameters (M) | wall s | peak RSS MiB | command |", "|--:|--:|--:|--:|---|"]
    for n_layer in (16, 32):
        model = synthetic_model(bench.work / f"synthetic-{n_layer}", n_layer, bench.model)
        params = sum(int(np.prod(shape)) for shape in _shapes(model).values()) / 1e6
        args = ["--format", "ct", "--bits", "4", "--group-size", "64", "--method", "gptq", "--calib",
                CALIB_TEXT, "--calib-samples", "8", "--calib-seq-len", "512"]
        cmd = bench.quantcli("convert", model, *args, "-o", "OUT")
        run = bench.run_once(f"synthetic-{n_layer}-ct-gptq",
                             lambda out, cmd=cmd: bench.timed([c if c != "OUT" else str(out) for c in cmd]),
                             " ".join(str(a) for a in ["quantcli convert MODEL", *args]).replace(str(CALIB_TEXT),
                                                                                               "calib.txt"))
        lines.append(f"| {n_layer} | {params:.0f} | {run.wall:.0f} | {mib(run.rss)} | `{run.command}` |")
    return lines


def _shapes(model: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(file, "np") as fh:
            for name in fh.keys():
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path.home() / ".cache/quantcli/fixtures/SmolLM2-135M-offgrid")
    parser.add_argument("--work", type=Path, help="outputs and their costs, reused by a rerun "
                        "(default $QUANTCLI_CACHE/measure-calibration/<model>-<samples>)")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=16, help="evaluation chunks of 512 tokens (at most)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of every process")
    parser.add_argument("--sections", default="ct,gguf,memory")
    parser.add_argument("--types", default="Q4_K_M,Q3_K_M,Q4_0")
    parser.add_argument("--no-ours-imatrix", action="store_true",
                        help="gguf: skip `--method gptq --imatrix` (llama-imatrix's file)")
    parser.add_argument("--ct-rows", default="ct-rtn,ct-gptq,ct-gptq-noact,ct-gptq-damp0.1,ct-awq,ct-awq-gptq,llmc-static,llmc-none",
                        help="ct: which rows (also llmc-damp0.1); llm-compressor's default is always made")
    parser.add_argument("--no-damp001", action="store_true", help="gguf: skip `--method gptq --damp 0.01`")
    parser.add_argument("--cost-no-awq", action="store_true", help="cost: only our GPTQ and llm-compressor's")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()

    model = args.model.expanduser().resolve()
    work = args.work or cache_dir("measure-calibration") / f"{model.name}-{args.samples}"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    bench = Bench(model, work, args.threads, args.samples, args.seq_len, args.chunks)
    sections = args.sections.split(",")
    lines = [f"### {model.name}", ""]
    if "ct" in sections:
        lines += ["#### compressed-tensors W4A16, group 64 (symmetric)", "", *section_ct(bench, args.ct_rows.split(",")), ""]
    if "gguf" in sections:
        lines += ["#### GGUF: llama-quantize + llama-imatrix vs `--method gptq`", "",
                  *section_gguf(bench, args.types.split(","), not args.no_ours_imatrix, args.no_damp001), ""]
    if "cost" in sections:
        lines += ["#### Cost: side by side, one core each", "", *section_cost(bench, not args.cost_no_awq), ""]
    if "memory" in sections:
        lines += ["#### Memory: 16 vs 32 layers (synthetic, SmolLM2 widths, random weights, 8 × 512 samples)", "",
                  *section_memory(bench), ""]
    chunks = json.loads(next(work.glob("*.score.json")).read_text())["chunks"] if list(work.glob("*.score.json")) \
        else args.chunks
    load_after = os.getloadavg()
    lines += [
        f"KLD: `llama-perplexity -m X.gguf -f quantcli/data/eval.txt -c 512 --chunks {args.chunks} -t 2 "
        "--kl-divergence-base f16.kld --kl-divergence` against llama.cpp's F16 GGUF of the source; "
        f"eval.txt holds {chunks} chunks of 512 tokens. Packed checkpoints are read by "
        "`convert_hf_to_gguf.py --outtype f16` (it dequantizes compressed-tensors). Calibration: "
        f"{args.samples} × {args.seq_len} tokens of quantcli/data/calib.txt for every method (the same windows "
        f"for quantcli and llm-compressor; llama-imatrix reads the same text, `-c {args.seq_len} --chunks "
        f"{args.samples}`). Every process with {args.threads} BLAS/OpenMP thread(s), run one after another by this script "
        "(other jobs on the machine are not controlled), "
        "wall time and peak RSS by GNU time. Machine: 2 cores shared with other jobs, load average "
        f"{load_before[0]:.1f} / {load_before[1]:.1f} before, {load_after[0]:.1f} / {load_after[1]:.1f} after; "
        f"this run {(time.perf_counter() - started) / 60:.0f} min (outputs already made by an earlier run of the "
        "same command are reused with the costs measured then).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
