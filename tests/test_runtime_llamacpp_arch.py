"""The runtime against llama.cpp on every architecture we claim: tiny random checkpoints with real tokenizers.

llama, qwen2, gemma2, gemma3, phi3, granite and smollm3 get the SentencePiece vocabulary of
tests/spm_fixture.py (whitespace-run, user-defined, byte-fallback and control pieces); qwen3, olmo2 and
phi4 SmolLM2's GPT-2 BPE vocabulary ('smollm'; a Qwen2 vocabulary is not at hand, and transformers rebuilds any
tokenizer.json under model_type qwen2 with Qwen's own pre-tokenizer, which then matches no known
pre-tokenizer hash). Each is
converted to F16 by llama.cpp's own convert_hf_to_gguf.py and quantized to Q4_K_M by llama-quantize, so
a mismatch points at the runtime. Per architecture: the token ids equal llama-tokenize's, `quantcli eval`
PPL is within 0.2 % of llama-perplexity's, the Q4_K_M's KLD within 5 % of llama-perplexity
--kl-divergence's, and greedy text equals llama-simple's. Texts hold code, tabs, runs of spaces, digits,
emoji and CJK; 2 chunks of 128 tokens keep it cheap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from spm_fixture import mixed_text
from tiny_models import BPE_ARCHS, make_arch_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CTX, CHUNKS = 128, 2
# plus rope scaling (tests/tiny_models.py): llama-3's rope_freqs, Phi-3 long-rope with the long factors
# (llama.cpp pads -c 128 to a 256-token context > the original 8) and with the short ones (original 256)
ARCHS = [
    "llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi4", "granite", "olmo2", "smollm3",
    "llama3-rope", "phi3-longrope", "phi3-shortrope",
]  # fmt: skip


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "mixed.txt"
    path.write_text(mixed_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=ARCHS)
def ggufs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path):
    from reference import convert_with_llamacpp, run_tool

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    hf = root / "hf"
    make_arch_checkpoint(arch, hf, smollm2_dir if arch in BPE_ARCHS else None)
    f16, q4 = root / "f16.gguf", root / "q4_k_m.gguf"
    proc = convert_with_llamacpp(hf, f16, "f16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_tool("llama-quantize", f16, q4, "Q4_K_M", 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return arch, hf, f16, q4


def _cli_json(args: list[object]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args], "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_token_ids_match_llama_tokenize(ggufs, text_file: Path) -> None:
    from reference import llama_tokenize_ids_no_special

    from quantcli.runtime import load_tokenizer

    arch, hf, f16, _ = ggufs
    ref = llama_tokenize_ids_no_special(f16, text_file)
    text = text_file.read_bytes().decode("utf-8")  # keep the \r\n
    assert load_tokenizer(f16).encode(text) == ref, arch
    assert load_tokenizer(hf).encode(text) == ref, arch
    assert len(ref) >= 2 * CTX


def test_perplexity_matches_llama_perplexity(ggufs, text_file: Path) -> None:
    from reference import perplexity_chunk_values

    arch, _, f16, _ = ggufs
    args = ["-m", f16, "-f", text_file, "-c", CTX, "--chunks", CHUNKS, "-t", 2]
    ref = perplexity_chunk_values(*args, chunk=CHUNKS)[0]  # the running PPL after the last chunk
    ours = _cli_json(["eval", f16, "--text", text_file, "--ctx", CTX, "--chunks", CHUNKS])
    assert ours["chunks"] == CHUNKS
    assert abs(ours["ppl"] / ref - 1) < 0.002, (arch, ours["ppl"], ref)


def test_kld_of_q4_k_m_matches_llama_perplexity(ggufs, text_file: Path, tmp_path: Path) -> None:
    from reference import perplexity_chunk_values, run_tool

    arch, _, f16, q4 = ggufs
    base = tmp_path / "base.kld"
    common = ["-f", text_file, "-c", CTX, "--chunks", CHUNKS, "-t", 2, "--kl-divergence-base", base]
    proc = run_tool("llama-perplexity", "-m", f16, *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = perplexity_chunk_values("-m", q4, *common, "--kl-divergence", chunk=CHUNKS)[4]  # running mean KLD
    ours = _cli_json(["eval", q4, "--text", text_file, "--ctx", CTX, "--chunks", CHUNKS, "--base", f16])
    assert ours["kld_mean"] > 0
    assert abs(ours["kld_mean"] / ref - 1) < 0.05, (arch, ours["kld_mean"], ref)


def test_greedy_matches_llama_simple(ggufs) -> None:
    from reference import run_tool

    from quantcli.runtime import Model, load_tokenizer, open_source
    from quantcli.runtime.generate import greedy

    arch, _, f16, _ = ggufs
    model, tokenizer = Model(open_source(f16)), load_tokenizer(f16)
    for prompt in ("def f(x):\n    return  x + 1", "Numbers 2024 and 🙂 日本"):
        proc = run_tool("llama-simple", "-m", f16, "-n", 8, prompt)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ours = greedy(model, tokenizer, prompt, 8)
        # llama-simple prints the prompt's tokens as pieces (BOS included), then the generated text
        printed = tokenizer.decode(ours["prompt_tokens"]) + ours["text"]
        assert proc.stdout.rstrip("\n") == printed.rstrip("\n"), (arch, prompt)
