"""Packed safetensors vs GGUF at the same bits: size and quality (KLD vs the BF16 source) on SmolLM2.

Every figure comes from quantcli's NumPy runtime (`quantcli eval --base SOURCE`, llama-perplexity's
method) in one run, 4 chunks of 512 tokens of the shipped eval text. Packed outputs are evaluated with
plain float32 activations (`--exact-activations`: their clients do not quantize activations); the GGUF
rows are shown both ways, since llama.cpp rounds activations to 8 bits inside quantized matmuls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNKS = "4"


def run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "quantcli", *args, "--json"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"quantcli {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> int:
    src = Path(subprocess.run([sys.executable, str(REPO / "scripts" / "make_smollm2_fixture.py"), "--print-path"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [
            ("GGUF Q8_0 (--bits 8)", ["--bits", "8"], "gguf", "q8.gguf"),
            ("compressed-tensors W8A16 g64", ["--format", "ct", "--bits", "8", "--group-size", "64"], "ct", "ct8"),
            ("GGUF Q4_K_M (--bits 4)", ["--bits", "4"], "gguf", "q4km.gguf"),
            ("GGUF Q4_0", ["--type", "q4_0"], "gguf", "q40.gguf"),
            ("compressed-tensors W4A16 g64", ["--format", "ct", "--bits", "4", "--group-size", "64"], "ct", "ct4"),
            ("MLX 4-bit g64", ["--format", "mlx", "--bits", "4", "--group-size", "64"], "mlx", "mlx4"),
            # g32 min/max is SmolLM2's own Q4_1 grid: near-lossless here, a check that the pipeline is exact.
            ("MLX 4-bit g32", ["--format", "mlx", "--bits", "4", "--group-size", "32"], "mlx", "mlx4g32"),
            ("GPTQ v1 4-bit g64", ["--format", "gptq", "--bits", "4", "--group-size", "64"], "gptq", "gptq4"),
            ("MLX 3-bit g64", ["--format", "mlx", "--bits", "3", "--group-size", "64"], "mlx", "mlx3"),
            ("GGUF Q3_K_M (--bits 3)", ["--bits", "3"], "gguf", "q3km.gguf"),
        ]
        for label, opts, fmt, name in outputs:
            out = Path(tmp) / name
            print(f"converting {label}", file=sys.stderr, flush=True)
            run("convert", str(src), "-o", str(out), *opts)
            modes = [True, False] if fmt == "gguf" else [True]
            for exact in modes:
                print(f"  eval ({'exact' if exact else 'ggml-style'} activations)", file=sys.stderr, flush=True)
                r = run("eval", str(out), "--base", str(src), "--chunks", CHUNKS,
                        *(["--exact-activations"] if exact else []))
                rows.append((label, fmt, "float32" if exact else "ggml 8-bit", size(out), r))
    print("## Packed safetensors vs GGUF (SmolLM2-135M, KLD against the BF16 source)\n")
    print(f"`python3 scripts/bench_packed.py`: group size 64 (SmolLM2's 576-wide rows do not divide by 128); quantcli eval --base SOURCE, {CHUNKS} chunks × 512 tokens of "
          "quantcli/data/eval.txt. SmolLM2's weights already sit on a Q4_1 grid (32-element groups, "
          "min/max): MLX 4-bit g32 reproduces it almost exactly, every other 4-bit grid re-rounds it, so 4-bit "
          "rows compare formats on this model only.\n")
    print("| output | format | activations | bytes | PPL | mean KLD | p99 KLD | top-1 |")
    print("|---|---|---|--:|--:|--:|--:|--:|")
    for label, fmt, act, nbytes, r in rows:
        print(f"| {label} | {fmt} | {act} | {nbytes:,} | {r['ppl']:.4f} | {r['kld_mean']:.5f} | "
              f"{r['kld_p99']:.5f} | {100 * r['same_top']:.2f} % |")
    print(f"\nPPL of the BF16 source on the same chunks: {rows[0][4]['ppl_base']:.4f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
