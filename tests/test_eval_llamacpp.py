"""The runtime against the real llama.cpp on SmolLM2-135M: PPL, greedy text, KLD/top-1, imatrix.

Reference GGUFs are made by llama.cpp itself (convert_hf_to_gguf.py --outtype f16, llama-quantize), so a
mismatch points at the runtime, not at our converter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from quantcli.runtime import Model, load_tokenizer, open_source
from quantcli.runtime.textdata import DEFAULT_TEXT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHUNKS = 2  # 2 x 512 tokens: enough to compare, cheap on a 2-core machine


def _run(args: list[object], **kw) -> subprocess.CompletedProcess:
    from reference import tool_env

    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=tool_env(), **kw)


@pytest.fixture(scope="module")
def f16_gguf(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from reference import convert_with_llamacpp

    out = tmp_path_factory.mktemp("rt") / "smollm2-f16.gguf"
    proc = convert_with_llamacpp(smollm2_dir, out, "f16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield out
    shutil.rmtree(out.parent)  # F16 + Q4_K_M, ~0.4 GB: not kept until the session ends


@pytest.fixture(scope="module")
def q4km_gguf(f16_gguf: Path) -> Path:
    from reference import tool

    out = f16_gguf.with_name("smollm2-q4_k_m.gguf")
    proc = _run([tool("llama-quantize"), f16_gguf, out, "Q4_K_M", 2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _final_ppl(log: str) -> float:
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    assert m, log[-2000:]
    return float(m.group(1))


def test_tokenizers_match_llama_tokenize(smollm2_dir: Path, f16_gguf: Path) -> None:
    from reference import tool

    proc = _run(
        [tool("llama-tokenize"), "-m", f16_gguf, "-f", DEFAULT_TEXT, "--ids", "--no-escape", "--log-disable"]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    text = DEFAULT_TEXT.read_text(encoding="utf-8")
    from_gguf = load_tokenizer(f16_gguf).encode(text)
    from_hf = load_tokenizer(smollm2_dir).encode(text)
    assert from_gguf == ref
    assert from_hf == ref
    assert len(ref) >= 8 * 512  # the shipped text holds 8 chunks of 512 for SmolLM2


def test_hf_directory_and_f16_gguf_give_the_same_logits(smollm2_dir: Path, f16_gguf: Path) -> None:
    tokens = np.asarray(load_tokenizer(f16_gguf).encode("The river moved slowly past the old mill."))
    outs = []
    for path in (smollm2_dir, f16_gguf):
        model = Model(open_source(path), emulate_ggml=False)
        outs.append(model.forward(tokens, model.new_cache(64), output_rows=np.arange(tokens.size)))
    # SmolLM2's BF16 weights are exact in F16 (they sit on a Q4_1 grid), so the two must agree closely
    assert np.abs(outs[0] - outs[1]).max() < 1e-3


def test_perplexity_matches_llama_perplexity(f16_gguf: Path) -> None:
    from reference import tool

    proc = _run(
        [tool("llama-perplexity"), "-m", f16_gguf, "-f", DEFAULT_TEXT, "-c", 512, "--chunks", CHUNKS, "-t", 2]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = _final_ppl(proc.stdout + proc.stderr)
    ours = _cli_json(["eval", f16_gguf, "--chunks", CHUNKS])
    assert ours["chunks"] == CHUNKS and ours["tokens_scored"] == CHUNKS * 255
    assert abs(ours["ppl"] / ref - 1) < 0.002, (ours["ppl"], ref)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def test_greedy_matches_llama_simple(f16_gguf: Path) -> None:
    from reference import tool

    from quantcli.runtime.generate import greedy

    model = Model(open_source(f16_gguf))
    tokenizer = load_tokenizer(f16_gguf)
    for prompt in PROMPTS:
        proc = _run([tool("llama-simple"), "-m", f16_gguf, "-n", 16, prompt])
        assert proc.returncode == 0, proc.stderr[-2000:]
        ours = greedy(model, tokenizer, prompt, 16)
        assert len(ours["tokens"]) == 16
        assert proc.stdout.rstrip("\n") == (prompt + ours["text"]).rstrip("\n"), prompt


def test_kld_and_top1_of_q4_k_m_match_llama_perplexity(
    f16_gguf: Path, q4km_gguf: Path, tmp_path: Path
) -> None:
    from reference import tool

    from quantcli.runtime.verify import verify

    base = tmp_path / "base.kld"
    common = ["-f", DEFAULT_TEXT, "-c", 512, "--chunks", CHUNKS, "-t", 2, "--kl-divergence-base", base]
    proc = _run([tool("llama-perplexity"), "-m", f16_gguf, *common])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run([tool("llama-perplexity"), "-m", q4km_gguf, *common, "--kl-divergence"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    ref_kld = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", log).group(1))
    ref_top = float(re.search(r"Same top p:\s+([0-9.]+)", log).group(1)) / 100
    ref_ppl_base = float(re.search(r"Mean PPL\(base\)\s+:\s+([0-9.]+)", log).group(1))
    # our runtime on Q4_K_M against llama.cpp's own base file: PPL(base) comes from the file alone
    against_file = _cli_json(["eval", q4km_gguf, "--base", base])
    assert against_file["chunks"] == CHUNKS
    assert against_file["ppl_base"] == pytest.approx(ref_ppl_base, rel=1e-5)
    assert abs(against_file["kld_mean"] / ref_kld - 1) < 0.10
    ours = verify(f16_gguf, q4km_gguf, chunks=CHUNKS, max_kld=None)
    assert abs(ours["kld_mean"] / ref_kld - 1) < 0.10, (ours["kld_mean"], ref_kld)
    assert abs(ours["top1_agreement"] - ref_top) <= 0.01, (ours["top1_agreement"], ref_top)
    assert ours["ppl_output"] > ours["ppl_source"]
    assert 0 < ours["kld_mean"] < ours["kld_p99"]


def test_imatrix_matches_llama_imatrix_and_llama_quantize_accepts_it(f16_gguf: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from reference import tool

    ref_path, our_path = tmp_path / "ref.imatrix.gguf", tmp_path / "ours.imatrix.gguf"
    proc = _run(
        [
            tool("llama-imatrix"),
            "-m",
            f16_gguf,
            "-f",
            DEFAULT_TEXT,
            "-c",
            512,
            "--chunks",
            CHUNKS,
            "-t",
            2,
            "-o",
            ref_path,
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = _cli_json(["imatrix", f16_gguf, "--chunks", CHUNKS, "-o", our_path])
    assert summary["entries"] == 30 * 7

    def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        r = GGUFReader(str(path))
        tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in r.tensors}
        kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
        return tensors, kv

    ref, ref_kv = read(ref_path)
    ours, our_kv = read(our_path)
    assert sorted(ours) == sorted(ref)
    for key in ("general.type", "imatrix.chunk_count", "imatrix.chunk_size"):
        assert our_kv[key] == ref_kv[key], key
    for name in ref:
        if name.endswith(".counts"):
            assert np.array_equal(ours[name], ref[name]), name
            continue
        rel = np.linalg.norm(ours[name] - ref[name]) / np.linalg.norm(ref[name])
        assert rel < 1e-2, (name, rel)

    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    assert _run([tool("llama-quantize"), f16_gguf, plain, "Q4_K_M", 2]).returncode == 0
    proc = _run([tool("llama-quantize"), "--imatrix", our_path, f16_gguf, weighted, "Q4_K_M", 2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    kv = {k: f.contents() for k, f in GGUFReader(str(weighted)).fields.items()}
    assert kv["quantize.imatrix.entries_count"] == 210
    assert plain.read_bytes() != weighted.read_bytes()

    # Q4_K_M made with our imatrix is as good as Q4_K_M made with llama-imatrix's: KLD within 5 %.
    with_ref = tmp_path / "weighted-ref.gguf"
    assert _run([tool("llama-quantize"), "--imatrix", ref_path, f16_gguf, with_ref, "Q4_K_M", 2]).returncode == 0
    kld_ours = _cli_json(["eval", weighted, "--base", f16_gguf, "--chunks", CHUNKS])["kld_mean"]
    kld_ref = _cli_json(["eval", with_ref, "--base", f16_gguf, "--chunks", CHUNKS])["kld_mean"]
    kld_plain = _cli_json(["eval", plain, "--base", f16_gguf, "--chunks", CHUNKS])["kld_mean"]
    assert abs(kld_ours - kld_ref) <= 0.05 * kld_ref, (kld_ours, kld_ref)
    assert kld_ours < kld_plain  # and the imatrix really helps


def _cli_json(args: list[object]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args], "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    return out
