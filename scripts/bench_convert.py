#!/usr/bin/env python3
"""Benchmark: `quantcli convert` vs llama.cpp's convert_hf_to_gguf.py on the SmolLM2-135M fixture, and the
one-pass recipe path (`--bits 4`, `--type q6_k`) vs the converter + llama-quantize it equals.

Each conversion runs in its own process under /usr/bin/time (wall time, peak RSS), in the same run and
on the same machine. Also checks our memory bound: peak RSS <= 3 x (largest tensor as F32) + 150 MB.
Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import reference_convert  # noqa: E402
from _benchlib import python_env, sha256, smollm2_fixture, timed  # noqa: E402

TYPES = ("bf16", "q8_0")


def log(message: str) -> None:
    print(f"[bench_convert] {message}", file=sys.stderr, flush=True)


def main() -> int:
    model = smollm2_fixture()
    from quantcli.loaders import open_checkpoint

    with open_checkpoint(model) as ckpt:
        infos = [ckpt.tensor_info(n) for n in ckpt.tensor_names()]
    largest = max(infos, key=lambda i: i.n_elements)
    bound = 3 * largest.n_elements * 4 + 150 * 10**6

    src = reference_convert.llamacpp_src()
    ref_env = python_env()
    our_env = python_env(PYTHONPATH=str(REPO))
    rows = []
    worst_rss = 0
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp_name:
        tmp = Path(tmp_name)
        for outtype in TYPES:
            ours = tmp / f"ours-{outtype}.gguf"
            ref = tmp / f"ref-{outtype}.gguf"
            log(f"quantcli convert --type {outtype}")
            t_ours, rss_ours, _ = timed(
                [
                    sys.executable,
                    "-m",
                    "quantcli",
                    "convert",
                    str(model),
                    "--type",
                    outtype,
                    "-o",
                    str(ours),
                    "--json",
                ],
                REPO,
                our_env,
            )
            log(f"convert_hf_to_gguf.py --outtype {outtype}")
            t_ref, rss_ref, _ = timed(
                [
                    sys.executable,
                    str(src / "convert_hf_to_gguf.py"),
                    str(model),
                    "--outtype",
                    outtype,
                    "--outfile",
                    str(ref),
                ],
                src,
                ref_env,
            )
            same = sha256(ours) == sha256(ref)
            worst_rss = max(worst_rss, rss_ours)
            rows.append((outtype, t_ours, rss_ours, t_ref, rss_ref, same, ours.stat().st_size))
            ours.unlink()
            ref.unlink()

    print("## Conversion: quantcli convert vs convert_hf_to_gguf.py (SmolLM2-135M, BF16 safetensors)\n")
    print(
        "| --type | quantcli s | quantcli peak RSS MiB | llama.cpp s | llama.cpp peak RSS MiB | speed-up | identical bytes | size |"
    )
    print("|---|--:|--:|--:|--:|--:|---|--:|")
    for outtype, t_ours, rss_ours, t_ref, rss_ref, same, size in rows:
        print(
            f"| {outtype} | {t_ours:.1f} | {rss_ours / 2**20:.0f} | {t_ref:.1f} | {rss_ref / 2**20:.0f} | "
            f"{t_ref / t_ours:.1f}x | {'yes' if same else 'NO'} | {size:,} |"
        )
    ok = worst_rss <= bound
    print(
        f"\nWall time and peak RSS of each whole process (interpreter start-up and imports included; llama.cpp's "
        f"converter imports torch), measured by GNU time, one run each, same machine, same run. "
        f"Memory bound for quantcli: 3 x largest tensor as F32 ({largest.name}, {largest.n_elements * 4 / 1e6:.1f} MB) "
        f"+ 150 MB = {bound / 1e6:.0f} MB; our worst peak {worst_rss / 1e6:.0f} MB: {'within' if ok else 'OVER'} the bound."
    )
    one_pass(model, src, ref_env, our_env, bound)
    # The verdicts are in the text; exit 0 so scripts/bench.py keeps the table (tests enforce identity).
    return 0


RECIPES = (("--bits", "4", "Q4_K_M"), ("--type", "q6_k", "Q6_K"))


def one_pass(model: Path, src: Path, ref_env: dict[str, str], our_env: dict[str, str], bound: int) -> None:
    """`quantcli convert --bits N` (one pass, no intermediate file) vs the two llama.cpp steps it equals."""
    sys.path.insert(0, str(REPO / "tests"))
    from reference import tool, tool_env

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onepass-") as tmp_name:
        tmp = Path(tmp_name)
        inter = tmp / "intermediate-bf16.gguf"
        log("convert_hf_to_gguf.py --outtype bf16 (step 1 of the reference)")
        t_conv, rss_conv, _ = timed(
            [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", "bf16", "--outfile", str(inter)],
            src,
            ref_env,
        )
        for flag, value, recipe in RECIPES:
            ours, ref = tmp / f"ours-{recipe}.gguf", tmp / f"ref-{recipe}.gguf"
            log(f"quantcli convert {flag} {value}")
            t_ours, rss_ours, _ = timed(
                [sys.executable, "-m", "quantcli", "convert", str(model), flag, value, "-o", str(ours), "--json"],
                REPO,
                our_env,
            )
            log(f"llama-quantize {recipe} (step 2 of the reference)")
            t_q, rss_q, _ = timed([str(tool("llama-quantize")), str(inter), str(ref), recipe], tmp, tool_env())
            rows.append(
                (f"{flag} {value}", recipe, t_ours, rss_ours, t_conv + t_q, max(rss_conv, rss_q),
                 inter.stat().st_size, sha256(ours) == sha256(ref), ours.stat().st_size)
            )  # fmt: skip
            ours.unlink()
            ref.unlink()

    print("\n## One pass: quantcli convert --bits N vs convert_hf_to_gguf.py --outtype bf16 + llama-quantize\n")
    print(
        "| request | recipe | quantcli s | quantcli peak RSS MiB | llama.cpp 2 steps s | llama.cpp peak RSS MiB | "
        "intermediate file | identical bytes | size |"
    )
    print("|---|---|--:|--:|--:|--:|--:|---|--:|")
    for request, recipe, t_ours, rss_ours, t_ref, rss_ref, inter_size, same, size in rows:
        print(
            f"| `{request}` | {recipe} | {t_ours:.1f} | {rss_ours / 2**20:.0f} | {t_ref:.1f} | {rss_ref / 2**20:.0f} | "
            f"{inter_size / 1e6:.0f} MB (quantcli: none) | {'yes' if same else 'NO'} | {size:,} |"
        )
    worst = max(r[3] for r in rows)
    print(
        f"\nThe reference is two processes (the converter, then llama-quantize on its BF16 file); its time is their "
        f"sum, its peak RSS the larger of the two. quantcli reads, transforms, quantizes and writes one tensor at "
        f"a time; its worst peak {worst / 1e6:.0f} MB is {'within' if worst <= bound else 'OVER'} the "
        f"{bound / 1e6:.0f} MB bound. One run each, same machine, same run."
    )


if __name__ == "__main__":
    sys.exit(main())
