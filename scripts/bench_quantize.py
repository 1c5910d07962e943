#!/usr/bin/env python3
"""Bench: `quantcli quantize` vs `llama-quantize` on the SmolLM2-135M F16 GGUF at Q4_K_M (and Q8_0).

The F16 GGUF is made by llama.cpp's own convert_hf_to_gguf.py from the SmolLM2 fixture (cached, shared
with tests/test_quantize_cmd.py). Each run is a separate process; wall time is measured around it and
peak RSS is the child's ru_maxrss (measured by a tiny wrapper process, so runs do not mix). Both tools
use 2 threads. Prints Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from _benchlib import cache_dir, convert_f16_with_llamacpp, sha256, smollm2_fixture  # noqa: E402

RECIPES = ("Q4_K_M", "Q8_0")
THREADS = 2
# Runs one command, prints {"seconds": wall, "peak_rss": bytes} of that command alone.
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode\n"
    "dt = time.perf_counter() - t\n"
    "print(json.dumps({'rc': rc, 'seconds': dt, 'peak_rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def smollm2_f16() -> Path:
    fixture = smollm2_fixture()
    weights = fixture / "model.safetensors"
    # The same cache name as tests/test_quantize_cmd.py, so the conversion is shared with it.
    out = cache_dir("plan-tests") / f"SmolLM2-135M-F16-{weights.stat().st_size}-{int(weights.stat().st_mtime)}.gguf"
    if not out.exists():
        log("converting SmolLM2 to F16 with convert_hf_to_gguf.py ...")
    return convert_f16_with_llamacpp(fixture, out)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(proc.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {result['rc']}")
    return result


def main() -> int:
    from reference import tool, tool_env

    src = smollm2_f16()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "quantcli-bench-quantize"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in RECIPES:
        ref, ours = work / f"ref-{recipe}.gguf", work / f"ours-{recipe}.gguf"
        for p in (ref, ours):
            p.unlink(missing_ok=True)
        log(f"llama-quantize {recipe} ...")
        r = measure([str(tool("llama-quantize")), str(src), str(ref), recipe, str(THREADS)], env=tool_env())
        log(f"quantcli quantize {recipe} ...")
        q = measure(
            [
                sys.executable,
                "-m",
                "quantcli",
                "quantize",
                str(src),
                str(ours),
                recipe,
                "--threads",
                str(THREADS),
            ],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        same = sha256(ref) == sha256(ours)
        rows.append((recipe, q, r, same, ours.stat().st_size))
        for p in (ref, ours):
            p.unlink(missing_ok=True)

    print("## quantize (GGUF -> GGUF)\n")
    print(
        f"SmolLM2-135M F16 GGUF ({src.stat().st_size / 2**20:.0f} MiB, made by convert_hf_to_gguf.py) "
        f"quantized by `quantcli quantize` and `llama-quantize`, {THREADS} threads each, one run each, "
        "same machine, one after the other. Peak RSS is the process's maximum resident set size.\n"
    )
    print(
        "| recipe | quantcli s | llama-quantize s | time ratio | quantcli peak RSS MiB | llama-quantize peak RSS MiB | output MiB | sha256 identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for recipe, q, r, same, size in rows:
        print(
            f"| {recipe} | {q['seconds']:.2f} | {r['seconds']:.2f} | {q['seconds'] / r['seconds']:.1f}x | "
            f"{q['peak_rss'] / 2**20:.0f} | {r['peak_rss'] / 2**20:.0f} | {size / 2**20:.1f} | {'yes' if same else 'NO'} |"
        )
    print(
        "\nquantcli's time includes Python start-up and imports (~1 s). The quantizers run in the C "
        "extension when it is built (QUANTCLI_NATIVE=0 forces NumPy)."
    )
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
