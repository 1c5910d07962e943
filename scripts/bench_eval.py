"""Bench section: `quantcli eval` (NumPy runtime) vs llama-perplexity -t 2, 8 chunks of 512 on SmolLM2 F16
and Q4_K_M.

The F16 GGUF is llama.cpp's own (convert_hf_to_gguf.py --outtype f16 from the SmolLM2 fixture), the
Q4_K_M one llama-quantize's from it, so both tools read the same bytes. Per file, llama-perplexity of
both llama.cpp builds (portable and native, BUILDS) and `quantcli eval` run RUNS times interleaved, on the
shipped eval text, each tool's median run reported; wall time, CPU time and peak RSS come
from the kernel's accounting of each child process (wait4). Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from _benchlib import cache_dir, convert_f16_with_llamacpp, python_env, smollm2_fixture  # noqa: E402

CHUNKS = 8
N_CTX = 512
THREADS = 2
RUNS = 3


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu: float  # user + system seconds
    peak_rss: int  # bytes


def run_measured(cmd: list[str], **kw) -> Run:
    """Run `cmd`; its wall time, CPU time and peak RSS as the kernel accounts them (wait4)."""
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    parts: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        parts[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", popen.stdout)),
        threading.Thread(target=drain, args=("err", popen.stderr)),
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(popen.pid, 0)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    popen.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    return Run(
        popen.returncode,
        parts["out"],
        parts["err"],
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss * 1024,
    )


def models() -> dict[str, Path]:
    from reference import tool, tool_env

    fixture = smollm2_fixture()
    f16 = cache_dir("bench") / "smollm2-f16.gguf"
    if not f16.exists():
        _log(f"converting {fixture} -> {f16} with llama.cpp's convert_hf_to_gguf.py")
    convert_f16_with_llamacpp(fixture, f16)
    q4 = cache_dir("bench") / "smollm2-q4_k_m.gguf"
    if not q4.exists():
        _log(f"llama-quantize {f16.name} -> {q4.name} Q4_K_M")
        tmp = q4.with_suffix(".part")
        proc = subprocess.run(
            [str(tool("llama-quantize")), str(f16), str(tmp), "Q4_K_M", str(THREADS)],
            capture_output=True,
            text=True,
            env=tool_env(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"llama-quantize failed:\n{proc.stderr[-3000:]}")
        tmp.rename(q4)
    return {"F16": f16, "Q4_K_M": q4}


# The two llama.cpp builds compared against: the tests' portable reference (AVX2/FMA) and one compiled
# for this CPU minus AMX (scripts/build_llamacpp.sh native), what a user building llama.cpp here runs.
BUILDS = {"portable": False, "native": True}


def llama_perplexity(model: Path, native: bool) -> tuple[Run, float]:
    from reference import tool, tool_env

    from quantcli.runtime.textdata import DEFAULT_TEXT

    run = run_measured(
        [
            str(tool("llama-perplexity", native=native)),
            *("-m", str(model), "-f", str(DEFAULT_TEXT), "-c", str(N_CTX)),
            *("--chunks", str(CHUNKS), "-t", str(THREADS)),
        ],
        env=tool_env(native=native),
    )
    if run.returncode != 0:
        raise SystemExit(f"llama-perplexity failed:\n{run.stderr[-2000:]}")
    return run, float(re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr).group(1))


def median_run(runs: list[Run]) -> Run:
    """The run of median wall time (its CPU time and peak RSS come with it)."""
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


def main() -> int:
    mib = 1 << 20
    rows = []
    ours_env = python_env(PYTHONPATH=str(REPO))
    for label, model in models().items():
        ours_cmd = [sys.executable, "-m", "quantcli", "eval", str(model), "--ctx", str(N_CTX), "--json"]
        if not rows:  # warm-up: compiles quantcli's modules once (an installed package has them compiled)
            run_measured([*ours_cmd, "--chunks", "1"], cwd=REPO, env=ours_env)
        llama_runs: dict[str, list[tuple[Run, float]]] = {build: [] for build in BUILDS}
        our_runs: list[Run] = []
        for i in range(RUNS):  # interleaved, so that every tool sees the same machine load
            for build, native in BUILDS.items():
                _log(f"{label} run {i + 1}/{RUNS}: llama-perplexity ({build} build), {CHUNKS} x {N_CTX}, -t {THREADS}")
                llama_runs[build].append(llama_perplexity(model, native))
            _log(f"{label} run {i + 1}/{RUNS}: quantcli eval")
            ours = run_measured([*ours_cmd, "--chunks", str(CHUNKS)], cwd=REPO, env=ours_env)
            if ours.returncode != 0:
                _log(ours.stderr[-2000:])
                return 1
            our_runs.append(ours)
        llamas = {}
        for build, runs in llama_runs.items():
            mid = median_run([r for r, _ in runs])
            llamas[build] = (mid, next(ppl for r, ppl in runs if r is mid))
        ours = median_run(our_runs)
        rows.append((label, llamas, ours, json.loads(ours.stdout)["ppl"]))

    print("## eval (NumPy runtime vs llama-perplexity)\n")
    print(
        "| model | tool | wall (s) | CPU (s) | peak RSS (MiB) | PPL | quantcli wall ratio | quantcli RSS ratio |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|"
    )
    for label, llamas, ours, ppl in rows:
        for build, (llama, llama_ppl) in llamas.items():
            print(
                f"| {label} | llama-perplexity -t {THREADS}, {build} build | {llama.wall:.1f} | {llama.cpu:.1f} "
                f"| {llama.peak_rss / mib:.0f} | {llama_ppl:.4f} | {ours.wall / llama.wall:.2f}x "
                f"| {ours.peak_rss / llama.peak_rss:.2f}x |"
            )
        print(
            f"| {label} | quantcli eval | {ours.wall:.1f} | {ours.cpu:.1f} | {ours.peak_rss / mib:.0f} "
            f"| {ppl:.4f} | | |"
        )
    print()
    print(
        f"SmolLM2-135M: llama.cpp's F16 GGUF and llama-quantize's Q4_K_M of it, the shipped eval text, "
        f"{CHUNKS} chunks of {N_CTX} tokens; per file {RUNS} rounds of the two llama-perplexity builds and "
        f"quantcli, interleaved on the same file, and each tool's run of median wall time shown. The portable build is the tests' reference (GGML_NATIVE=OFF: "
        "AVX2/FMA); the native build is -march=native without AMX, what a user compiling llama.cpp on this "
        "machine runs (AVX-512 where the CPU has it). Wall times include process start, model load and "
        "tokenization; quantcli runs with its bytecode compiled by an earlier one-chunk run, as an installed "
        "package has it; CPU is user + system of the whole process (busy-waiting worker threads count). "
        "Ratios are quantcli's over each build's. Goal: wall ratio <= 1.0x, RSS ratio <= 1.3x, and "
        "quantcli's PPL unchanged by speed work (it emulates ggml's activation rounding; docs/verification.md)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
