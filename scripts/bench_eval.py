"""Bench section: `quantcli eval` (NumPy runtime) vs llama-perplexity, 8 chunks of 512 on SmolLM2 F16.

Both run in this process's machine one after the other on the same GGUF (made by llama.cpp's own
convert_hf_to_gguf.py --outtype f16 from the SmolLM2 fixture) and the shipped eval text. Markdown on
stdout, progress on stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from _benchlib import cache_dir, convert_f16_with_llamacpp, smollm2_fixture  # noqa: E402

CHUNKS = 8
N_CTX = 512


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def f16_gguf() -> Path:
    fixture = smollm2_fixture()
    out = cache_dir("bench") / "smollm2-f16.gguf"
    if not out.exists():
        _log(f"converting {fixture} -> {out} with llama.cpp's convert_hf_to_gguf.py")
    return convert_f16_with_llamacpp(fixture, out)


def run_sampling_rss(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, int]:
    """Run `cmd`, sampling its resident set size every 20 ms; (result, peak RSS bytes)."""
    import psutil

    peak = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as popen:
        ps = psutil.Process(popen.pid)
        out_parts: list[str] = []

        def drain(stream, sink: list[str]) -> None:
            sink.append(stream.read())

        readers = [
            threading.Thread(target=drain, args=(popen.stdout, out_parts)),
            threading.Thread(target=drain, args=(popen.stderr, out_parts)),
        ]
        for r in readers:
            r.start()
        while popen.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.02)
        for r in readers:
            r.join()
    return subprocess.CompletedProcess(cmd, popen.returncode, "".join(out_parts), ""), peak


def main() -> int:
    from reference import tool, tool_env

    from quantcli.runtime.textdata import DEFAULT_TEXT

    model = f16_gguf()
    threads = os.cpu_count() or 1
    _log(f"llama-perplexity, {CHUNKS} chunks of {N_CTX}, {threads} threads")
    t0 = time.perf_counter()
    cmd = [str(tool("llama-perplexity")), "-m", str(model), "-f", str(DEFAULT_TEXT), "-c", str(N_CTX)]
    proc, llama_rss = run_sampling_rss([*cmd, "--chunks", str(CHUNKS), "-t", str(threads)], env=tool_env())
    llama_s = time.perf_counter() - t0
    if proc.returncode != 0:
        _log(proc.stdout[-2000:])
        return 1
    llama_ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout).group(1))

    _log("quantcli eval")
    t0 = time.perf_counter()
    ours_proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantcli",
            "eval",
            str(model),
            "--ctx",
            str(N_CTX),
            "--chunks",
            str(CHUNKS),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    ours_s = time.perf_counter() - t0
    if ours_proc.returncode != 0:
        _log(ours_proc.stderr[-2000:])
        return 1
    ours = json.loads(ours_proc.stdout)

    mib = 1 << 20
    print("## eval (NumPy runtime vs llama-perplexity)\n")
    print("| tool | wall time (s) | PPL | peak RSS (MiB) |")
    print("|---|--:|--:|--:|")
    print(f"| llama-perplexity (-t {threads}) | {llama_s:.1f} | {llama_ppl:.4f} | {llama_rss / mib:.0f} |")
    print(f"| quantcli eval | {ours_s:.1f} | {ours['ppl']:.4f} | {ours['peak_rss_bytes'] / mib:.0f} |")
    print()
    print(
        f"SmolLM2-135M F16 GGUF (llama.cpp's converter), the shipped eval text, {CHUNKS} chunks of {N_CTX} "
        f"tokens ({ours['tokens_scored']} scored). Wall times include process start, model load and "
        f"tokenization. quantcli/llama time ratio: {ours_s / llama_s:.2f}x (goal: within 3x). "
        f"PPL difference: {100 * (ours['ppl'] / llama_ppl - 1):+.3f} %. The runtime is NumPy float32 with "
        "ggml's activation rounding emulated (docs/verification.md)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
