#!/usr/bin/env python3
"""Bench: `quantcli quantize` vs `llama-quantize` on a 27M-parameter synthetic F16 GGUF at Q8_0 and Q4_K_M,
and the start-up time of `quantcli --help` / `--version`.

The model is tests/test_plan_synthetic.py's synthetic llama (16 layers, n_embd 256, n_ff 1536, vocab 10240:
27.3M parameters, 52 MiB), built once and cached. Each run is a separate process, process start included;
both tools use 2 threads. Runs are interleaved (llama-quantize, quantcli, llama-quantize, ...) so that both
see the same machine load, and each figure is the median of RUNS runs; the ratio is of the two medians.
quantcli runs with its bytecode cached (`_benchlib.python_env`, the state of a pip-installed package) after
one warm-up run of each tool, which also puts the input in the page cache.
Prints Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _benchlib import cache_dir, python_env, sha256  # noqa: E402

RECIPES = ("Q8_0", "Q4_K_M")
THREADS = 2
RUNS = 5
SIZES = {"n_layer": 16, "n_embd": 256, "n_ff": 1536, "n_vocab": 10240}
# Runs one command; prints its wall time, CPU time (user + system) and peak RSS, measured for it alone.
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "dt = time.perf_counter() - t\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'rc': rc, 'seconds': dt, 'cpu': ru.ru_utime + ru.ru_stime, 'peak_rss': ru.ru_maxrss * 1024}))\n"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_f16() -> tuple[Path, int]:
    from test_plan_synthetic import build_synthetic_gguf

    from quantcli.loaders.gguf import GGUFFile

    out = cache_dir("bench") / "synthetic-27m-f16.gguf"
    if not out.exists():
        log(f"building {out.name} ...")
        tmp = out.with_suffix(".tmp")
        build_synthetic_gguf(tmp, **SIZES)
        tmp.replace(out)
    with GGUFFile(out) as f:
        n_params = sum(math.prod(t.ne) for t in f.tensors.values())
    return out, n_params


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(proc.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {result['rc']}: {' '.join(cmd)}")
    return result


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    from reference import tool, tool_env

    src, n_params = synthetic_f16()
    ours_env = python_env(PYTHONPATH=str(REPO))
    ref_env = tool_env()
    work = Path(tempfile.mkdtemp(prefix="quantcli-bench-quantize-"))
    load_before = load_average()
    rows = []
    for recipe in RECIPES:
        ref, ours = work / f"ref-{recipe}.gguf", work / f"ours-{recipe}.gguf"
        ref_cmd = [str(tool("llama-quantize")), str(src), str(ref), recipe, str(THREADS)]
        ours_cmd = [sys.executable, "-m", "quantcli", "quantize", str(src), str(ours), recipe, "--force",
                    "--threads", str(THREADS)]  # fmt: skip
        log(f"{recipe}: warm-up, then {RUNS} interleaved runs of each ...")
        measure(ref_cmd, ref_env)
        measure(ours_cmd, ours_env)
        r_runs, q_runs = [], []
        for _ in range(RUNS):
            ref.unlink(missing_ok=True)
            r_runs.append(measure(ref_cmd, ref_env))
            q_runs.append(measure(ours_cmd, ours_env))
        same = sha256(ref) == sha256(ours)
        rows.append((recipe, q_runs, r_runs, same, ours.stat().st_size))
        for p in (ref, ours):
            p.unlink(missing_ok=True)

    log(f"--help / --version: {RUNS} runs each ...")
    starts = {}
    for args in (["--help"], ["--version"]):
        measure([sys.executable, "-m", "quantcli", *args], ours_env)
        starts[args[0]] = [measure([sys.executable, "-m", "quantcli", *args], ours_env) for _ in range(RUNS)]
    bare = [measure([sys.executable, "-c", "pass"], ours_env) for _ in range(RUNS)]
    # What a quantize run imports before it reads a byte: the floor under its time.
    imports = [measure([sys.executable, "-c", "import quantcli.cli, quantcli.engine"], ours_env) for _ in range(RUNS)]
    load_after = load_average()
    work.rmdir()

    print("## quantize (GGUF -> GGUF)\n")
    print(
        f"Synthetic llama F16 GGUF ({n_params / 1e6:.1f}M parameters, {src.stat().st_size / 2**20:.0f} MiB, "
        f"tests/test_plan_synthetic.py with {SIZES}) quantized by `quantcli quantize` and `llama-quantize`, "
        f"{THREADS} threads each, process start included. Median of {RUNS} runs each, interleaved on the same "
        f"machine; the ratio is quantcli's median over llama-quantize's. CPU is user + system time. Load "
        f"average {load_before} before, {load_after} after.\n"
    )
    print(
        "| recipe | quantcli s | llama-quantize s | wall ratio | quantcli CPU s | llama-quantize CPU s | "
        "quantcli peak RSS MiB | llama-quantize peak RSS MiB | output MiB | sha256 identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for recipe, q, r, same, size in rows:
        qs, rs = median(q, "seconds"), median(r, "seconds")
        print(
            f"| {recipe} | {qs:.2f} | {rs:.2f} | {qs / rs:.2f}x | {median(q, 'cpu'):.2f} | {median(r, 'cpu'):.2f} | "
            f"{median(q, 'peak_rss') / 2**20:.0f} | {median(r, 'peak_rss') / 2**20:.0f} | {size / 2**20:.1f} | "
            f"{'yes' if same else 'NO'} |"
        )
    print(
        f"\nStart-up, median of {RUNS}: `quantcli --help` {median(starts['--help'], 'seconds'):.3f} s "
        f"({median(starts['--help'], 'cpu'):.3f} s CPU), `quantcli --version` "
        f"{median(starts['--version'], 'seconds'):.3f} s; a bare `python -c pass` takes "
        f"{median(bare, 'seconds'):.3f} s here, and importing what a quantize run needs (the CLI, the engine, "
        f"numpy, gguf-py's constants) {median(imports, 'seconds'):.3f} s ({median(imports, 'cpu'):.3f} s CPU), single-threaded: "
        "the part of quantcli's time that llama-quantize does not have. The quantizers run in the C extension "
        "when it is built (QUANTCLI_NATIVE=0 forces NumPy)."
    )
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
