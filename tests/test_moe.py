"""Mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) against llama.cpp's own tools.

Tiny random checkpoints saved by transformers (tests/tiny_models.py: Mixtral with 8 experts, the others
with 4, two used per token, rows of 256; Qwen2-MoE with its gated shared expert), per-expert tensors as
the released models store them. Per
architecture: our conversion equals convert_hf_to_gguf.py byte for byte (f32, bf16, q8_0) and converter +
llama-quantize (Q4_K_M; MXFP4_MOE for Mixtral) in one pass; `quantcli eval` PPL is within 0.2 % of
llama-perplexity's and the Q4_K_M's KLD within 5 % of its --kl-divergence; greedy text equals
llama-simple's; our imatrix has llama-imatrix's entries, per-expert counts, and per-expert sums within 1 %,
and quantizing with it equals llama-quantize --imatrix.
The runtime's logits against transformers' are in tests/test_runtime.py (TINY holds these architectures).
The fast tests at the end need neither torch nor llama.cpp: stacking order, refusals, peak memory.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from spm_fixture import mixed_text
from tiny_models import make_arch_checkpoint

from quantcli.writers.safetensors import write_file

REPO = Path(__file__).resolve().parent.parent
CTX, CHUNKS = 128, 2
ARCHS = ["mixtral", "qwen2moe", "qwen3moe", "olmoe"]
SPM_ARCHS = {"mixtral"}  # LlamaModel reads tokenizer.model; the others use TextModel's GPT-2 BPE


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(args: list[object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args]], capture_output=True, text=True, cwd=REPO
    )


def _cli_json(args: list[object]) -> dict:
    proc = _cli([*args, "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "mixed.txt"
    path.write_text(mixed_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=ARCHS)
def moe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path):
    """(arch, HF dir, llama.cpp's F32 conversion, its Q4_K_M by llama-quantize)."""
    from reference import convert_with_llamacpp, run_tool

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    hf = make_arch_checkpoint(arch, root / "hf", None if arch in SPM_ARCHS else smollm2_dir)
    f32, q4 = root / "f32.gguf", root / "q4_k_m.gguf"
    proc = convert_with_llamacpp(hf, f32, "f32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_tool("llama-quantize", f32, q4, "Q4_K_M", 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return arch, hf, f32, q4


@pytest.mark.slow
def test_convert_equals_convert_hf_to_gguf(moe, tmp_path: Path) -> None:
    from reference import convert_with_llamacpp

    arch, hf, f32, _ = moe
    for out_type in ("f32", "bf16", "q8_0"):
        ref = f32 if out_type == "f32" else tmp_path / f"ref-{out_type}.gguf"
        if out_type != "f32":
            proc = convert_with_llamacpp(hf, ref, out_type)
            assert proc.returncode == 0, proc.stderr[-2000:]
        ours = tmp_path / f"ours-{out_type}.gguf"
        proc = _cli(["convert", hf, "--type", out_type, "-o", ours])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _sha(ours) == _sha(ref), (arch, out_type)
        ours.unlink()
        if out_type != "f32":
            ref.unlink()


@pytest.mark.slow
def test_recipes_equal_converter_plus_llama_quantize(moe, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from reference import run_tool

    arch, hf, f32, q4 = moe
    ours = tmp_path / "ours-q4_k_m.gguf"
    proc = _cli(["convert", hf, "--type", "Q4_K_M", "-o", ours])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _sha(ours) == _sha(q4), arch
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(ours)).tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # the routers are never quantized
    if arch == "qwen2moe":
        assert types["blk.0.ffn_gate_inp_shexp.weight"] == "F32"
    assert {types[f"blk.0.ffn_{p}_exps.weight"] for p in ("gate", "up", "down")} <= {"Q4_K", "Q6_K"}
    if arch == "mixtral":  # MXFP4_MOE: experts MXFP4, the rest Q8_0
        ref, mine = tmp_path / "ref-mxfp4.gguf", tmp_path / "ours-mxfp4.gguf"
        proc = run_tool("llama-quantize", f32, ref, "MXFP4_MOE", 2)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = _cli(["convert", hf, "--type", "MXFP4_MOE", "-o", mine])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _sha(mine) == _sha(ref)
        types = {t.name: t.tensor_type.name for t in GGUFReader(str(mine)).tensors}
        assert types["blk.1.ffn_down_exps.weight"] == "MXFP4" and types["blk.1.attn_q.weight"] == "Q8_0"


@pytest.mark.slow
def test_perplexity_and_kld_match_llama_perplexity(moe, text_file: Path, tmp_path: Path) -> None:
    from reference import perplexity_chunk_values, run_tool

    arch, _, f32, q4 = moe
    args = ["-m", f32, "-f", text_file, "-c", CTX, "--chunks", CHUNKS, "-t", 2]
    ref_ppl = perplexity_chunk_values(*args, chunk=CHUNKS)[0]
    ours = _cli_json(["eval", f32, "--text", text_file, "--ctx", CTX, "--chunks", CHUNKS])
    assert abs(ours["ppl"] / ref_ppl - 1) < 0.002, (arch, ours["ppl"], ref_ppl)

    base = tmp_path / "base.kld"
    common = ["-f", text_file, "-c", CTX, "--chunks", CHUNKS, "-t", 2, "--kl-divergence-base", base]
    proc = run_tool("llama-perplexity", "-m", f32, *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref_kld = perplexity_chunk_values("-m", q4, *common, "--kl-divergence", chunk=CHUNKS)[4]
    ours = _cli_json(["eval", q4, "--text", text_file, "--ctx", CTX, "--chunks", CHUNKS, "--base", f32])
    assert ours["kld_mean"] > 0
    assert abs(ours["kld_mean"] / ref_kld - 1) < 0.05, (arch, ours["kld_mean"], ref_kld)


@pytest.mark.slow
def test_greedy_matches_llama_simple(moe) -> None:
    from reference import run_tool

    from quantcli.runtime import Model, load_tokenizer, open_source
    from quantcli.runtime.generate import greedy

    arch, _, f32, _ = moe
    model, tokenizer = Model(open_source(f32)), load_tokenizer(f32)
    for prompt in ("def f(x):\n    return  x + 1", "Numbers 2024 and 🙂 日本"):
        proc = run_tool("llama-simple", "-m", f32, "-n", 8, prompt)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ours = greedy(model, tokenizer, prompt, 8)
        printed = tokenizer.decode(ours["prompt_tokens"]) + ours["text"]
        assert proc.stdout.rstrip("\n") == printed.rstrip("\n"), (arch, prompt)


@pytest.mark.slow
def test_imatrix_matches_llama_imatrix_per_expert(moe, text_file: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader
    from reference import tool

    arch, _, f32, _ = moe
    ref_path, our_path = tmp_path / "ref.imatrix.gguf", tmp_path / "ours.imatrix.gguf"
    proc = subprocess.run(
        [str(a) for a in (tool("llama-imatrix"), "-m", f32, "-f", text_file, "-c", CTX, "--chunks", CHUNKS,
                          "-t", 2, "-o", ref_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    _cli_json(["imatrix", f32, "--text", text_file, "--ctx", CTX, "--chunks", CHUNKS, "-o", our_path])

    def read(path: Path) -> dict[str, np.ndarray]:
        """Each entry as (matrices, values): llama-imatrix's files drop a dense entry's trailing 1-dim."""
        tensors = {t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(str(path)).tensors}
        return {n: v.reshape(tensors[n.rsplit(".", 1)[0] + ".counts"].size, -1) for n, v in tensors.items()}

    ref, ours = read(ref_path), read(our_path)
    assert sorted(ours) == sorted(ref)
    n_expert = 8 if arch == "mixtral" else 4
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        if "_exps." in name:  # one row of sums and one count per expert
            assert ref[name].shape[0] == n_expert, name
        if name.endswith(".counts"):
            assert np.array_equal(ours[name], ref[name]), (arch, name)
            continue
        for expert, (mine, theirs) in enumerate(zip(ours[name], ref[name], strict=True)):
            rel = np.linalg.norm(mine - theirs) / max(float(np.linalg.norm(theirs)), 1e-30)
            assert rel < 1e-2, (arch, name, expert, rel)
    used = ref["blk.0.ffn_down_exps.weight.counts"].reshape(-1)
    assert used.sum() == 2 * CTX * CHUNKS and (used > 0).sum() > 1  # top-2 of every token, spread

    # Quantizing with it: each expert with its own slice, as llama-quantize does
    ref_q4, our_q4 = tmp_path / "ref-imatrix-q4.gguf", tmp_path / "ours-imatrix-q4.gguf"
    proc = subprocess.run([str(a) for a in (tool("llama-quantize"), "--imatrix", our_path, f32, ref_q4, "Q4_K_M", 2)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli(["quantize", f32, our_q4, "Q4_K_M", "--imatrix", our_path])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _sha(our_q4) == _sha(ref_q4), arch


# ---- no torch, no llama.cpp ---------------------------------------------------------------------------


def _synthetic_mixtral(directory: Path, n_expert: int = 4, ff: int = 64, hidden: int = 32, layers: int = 2,
                       drop: str | None = None) -> Path:
    """A Mixtral checkpoint of BF16 random weights (tensors sorted by name in the file, as transformers
    writes them) and a SentencePiece vocabulary."""
    from spm_fixture import VOCAB_SIZE, add_spm_tokenizer

    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (VOCAB_SIZE, hidden), "model.norm.weight": (hidden,),
        "lm_head.weight": (VOCAB_SIZE, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
                   p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "block_sparse_moe.gate.weight": (n_expert, hidden)}
        for x in range(n_expert):
            e = f"{p}block_sparse_moe.experts.{x}."
            shapes |= {e + "w1.weight": (ff, hidden), e + "w2.weight": (hidden, ff), e + "w3.weight": (ff, hidden)}
    tensors = {n: rng.standard_normal(s).astype(ml_dtypes.bfloat16) for n, s in sorted(shapes.items()) if n != drop}
    write_file(directory / "model.safetensors", tensors, {"format": "pt"})
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": hidden,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": VOCAB_SIZE, "num_local_experts": n_expert,
              "num_experts_per_tok": 2, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
    (directory / "config.json").write_text(json.dumps(config))
    add_spm_tokenizer(directory)
    return directory


@pytest.mark.slow  # llama.cpp's converter imports torch
def test_bf16_experts_equal_the_converter(tmp_path: Path) -> None:
    """A BF16 checkpoint (the converter widens each expert to float32 before stacking): auto/bf16/q8_0 and
    the Q4_K_M recipe over the lossless BF16 intermediate, byte for byte."""
    from reference import convert_with_llamacpp, run_tool

    hf = _synthetic_mixtral(tmp_path / "hf", n_expert=8, ff=256, hidden=256)
    for out_type in ("auto", "q8_0"):
        ref, ours = tmp_path / f"ref-{out_type}.gguf", tmp_path / f"ours-{out_type}.gguf"
        assert convert_with_llamacpp(hf, ref, out_type).returncode == 0
        assert _cli(["convert", hf, "--type", out_type, "-o", ours]).returncode == 0
        assert _sha(ours) == _sha(ref), out_type
    ref_q4, ours_q4 = tmp_path / "ref-q4.gguf", tmp_path / "ours-q4.gguf"
    assert run_tool("llama-quantize", tmp_path / "ref-auto.gguf", ref_q4, "Q4_K_M", 2).returncode == 0
    assert _cli(["convert", hf, "--bits", 4, "-o", ours_q4]).returncode == 0
    assert _sha(ours_q4) == _sha(ref_q4)


def test_experts_stack_where_the_converter_writes_them(tmp_path: Path) -> None:
    """12 experts: names sort experts.10/11 before experts.2, so the layer's last expert matrix is
    experts.9.w3; the three stacks come right there (before the router, `gate`), in w1, w2, w3 order, and
    hold the experts in index order."""
    from quantcli.sources.hf import open_converter_view

    hf = _synthetic_mixtral(tmp_path / "hf", n_expert=12, layers=1)
    with open_converter_view(hf, "f32") as view:
        names = [t.name for t in view.tensors]
        assert names == [
            "output.weight", "token_embd.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight",
            "blk.0.ffn_up_exps.weight", "blk.0.ffn_gate_inp.weight", "blk.0.attn_norm.weight",
            "blk.0.ffn_norm.weight", "blk.0.attn_k.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight",
            "blk.0.attn_v.weight", "output_norm.weight",
        ]
        down = next(t for t in view.tensors if t.name == "blk.0.ffn_down_exps.weight")
        assert down.shape == (12, 32, 64) and down.ne == (64, 32, 12)
        values = down.produce()
        assert values.dtype == np.float32
        for x in (0, 2, 10):
            expected = view.ckpt.read(f"model.layers.0.block_sparse_moe.experts.{x}.w2.weight").astype(np.float32)
            assert np.array_equal(values[x], expected)
        assert view.metadata.values()["llama.expert_count"] == 12


def test_missing_expert_matrix_is_malformed_input(tmp_path: Path) -> None:
    hf = _synthetic_mixtral(tmp_path / "hf", drop="model.layers.1.block_sparse_moe.experts.3.w2.weight")
    out = tmp_path / "out.gguf"
    proc = _cli(["convert", hf, "--type", "f32", "-o", out])
    assert proc.returncode == 4, proc.stderr
    assert "layer 1 lacks some of its 4 experts" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_expert_beyond_the_config_is_malformed_input(tmp_path: Path) -> None:
    hf = _synthetic_mixtral(tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_local_experts": 3}))
    proc = _cli(["convert", hf, "--type", "f32", "-o", tmp_path / "out.gguf"])
    assert proc.returncode == 4 and "outside the 3 experts" in proc.stderr, proc.stderr


def _conversion_peak_growth(hf: Path, out: Path) -> int:
    """Bytes a `convert --type bf16` adds to its process's peak RSS. After the imports the child resets its
    high-water mark (/proc/self/clear_refs "5"): VmHWM afterwards is the resident set at the reset plus
    what the conversion added on top of it."""
    code = (
        "import sys\n"
        "from quantcli import cli\n"
        "from quantcli.console import peak_rss_bytes\n"
        "import quantcli.sources.hf, quantcli.engine.job, quantcli.writers.gguf, gguf, numpy, ml_dtypes\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = peak_rss_bytes()\n"
        "try:\n"
        "    cli.main(['convert', sys.argv[1], '--type', 'bf16', '-o', sys.argv[2]])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(peak_rss_bytes() - base)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(hf), str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip().splitlines()[-1])


def test_peak_rss_is_bounded_by_the_largest_stacked_tensor(tmp_path: Path) -> None:
    """Stacks are made one expert at a time into one array and streamed out one at a time: converting
    4 layers of experts (16 experts of 1024 x 256 BF16 per projection, 96 MiB) needs no more memory than
    converting 1 (24 MiB), and the growth stays within a conversion's fixed cost (vocabulary, metadata:
    14 MiB measured with tiny experts) plus 4 BF16 stacks: `--type bf16` of BF16 experts stacks their
    stored bits (`read_stored`), never a float32 stack (16 MiB, which widening and re-encoding needs 5 of)
    — and never the layer's or the model's experts together."""
    stack_bf16 = 16 * 1024 * 256 * 2  # 8 MiB
    grown = {
        layers: _conversion_peak_growth(
            _synthetic_mixtral(tmp_path / f"hf{layers}", n_expert=16, ff=1024, hidden=256, layers=layers),
            tmp_path / f"out{layers}.gguf",
        )
        for layers in (1, 4)
    }
    assert grown[4] < 16 * 2**20 + 4 * stack_bf16, {k: v / 2**20 for k, v in grown.items()}
    assert grown[4] - grown[1] < stack_bf16, {k: v / 2**20 for k, v in grown.items()}


def test_runtime_runs_a_synthetic_moe_and_refuses_a_bad_expert_count(tmp_path: Path) -> None:
    """The HF view of a Mixtral runs (`eval`, exit 0); one claiming more used experts than it has is
    malformed (exit 4, one line, before any weight is read)."""
    hf = _synthetic_mixtral(tmp_path / "hf")
    text = tmp_path / "text.txt"
    text.write_text(mixed_text()[:2000], encoding="utf-8")
    result = _cli_json(["eval", hf, "--text", text, "--ctx", 64, "--chunks", 1])
    assert result["chunks"] == 1 and np.isfinite(result["ppl"])
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": 5}))
    proc = _cli(["eval", hf, "--text", text, "--ctx", 64, "--chunks", 1])
    assert proc.returncode == 4, proc.stderr
    assert "expert_used_count 5 and expert_count 4" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_experts_dequantized_one_at_a_time_give_the_same_logits(tmp_path: Path) -> None:
    """Above the float32 cache budget the runtime dequantizes each used expert alone (load_rows on the
    stack's first axis) instead of whole stacks: the same numbers, from a Q4_K_M GGUF and an HF directory."""
    from quantcli.runtime import Model, open_source

    hf = _synthetic_mixtral(tmp_path / "hf", ff=256, hidden=256)
    gguf = tmp_path / "q4.gguf"
    assert _cli(["convert", hf, "--type", "Q4_K_M", "-o", gguf]).returncode == 0
    tokens = np.arange(3, 40, dtype=np.int64).reshape(1, -1)
    rows = np.arange(tokens.shape[1])
    for source in (gguf, hf):
        whole = next(Model(open_source(source)).forward_sequences(tokens, rows))
        per_expert = next(Model(open_source(source), cache_budget_bytes=0).forward_sequences(tokens, rows))
        assert np.array_equal(whole, per_expert), source
