"""GPT-OSS (GptOssForCausalLM -> GGUF "gpt-oss") against llama.cpp's convert_hf_to_gguf.py and llama-quantize.

Two checkpoints of the real config's shape, scaled down (2 layers, one sliding-window and one full, hidden
256, 4 experts with 2 used, attention sinks, biases, YaRN rope): one saved by transformers in BF16 (experts
stacked, `gate_up_proj` (E, n_embd, 2 * n_ff) interleaved and `down_proj`), and the same with its experts
stored as openai/gpt-oss-* ship them, MXFP4 `*_blocks` + `*_scales` uint8 with random codes and scales.
Our conversion equals the converter's byte for byte (f32, bf16, q8_0, auto) and converter + llama-quantize
(Q4_K_M, MXFP4_MOE). The runtime (sliding window, attention sinks, YaRN, clamped SwiGLU experts with biases)
generates llama-simple's greedy text, and its PPL, KLD and imatrix follow llama.cpp's tools; against
transformers' float32 logits it is tested in tests/test_runtime.py (TINY["gpt-oss"]). The fast tests at
the end need no llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from quantcli.writers.safetensors import write_file

REPO = Path(__file__).resolve().parent.parent
OUT_TYPES = ("f32", "bf16", "q8_0")
# gpt-oss-20b's quantization_config
MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(args: list[object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args]], capture_output=True, text=True, cwd=REPO
    )


def _copy_tokenizer(bpe_dir: Path, directory: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bpe_dir / name, directory / name)


def make_gpt_oss_checkpoint(directory: Path, bpe_dir: Path) -> Path:
    """GptOssForCausalLM of gpt-oss-20b's config shape, scaled down, saved by transformers in BF16."""
    import torch
    import transformers

    cfg = dict(
        architectures=["GptOssForCausalLM"], model_type="gpt_oss", hidden_size=256, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_hidden_layers=2, vocab_size=49152,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=8, max_position_embeddings=1024,
        layer_types=["sliding_attention", "full_attention"], rms_norm_eps=1e-5, rope_theta=150000.0,
        rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                          original_max_position_embeddings=32),
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(transformers.AutoConfig.for_model(**cfg)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.08))
    model.to(torch.bfloat16).save_pretrained(directory, safe_serialization=True)
    _copy_tokenizer(bpe_dir, directory)
    return directory


def mxfp4_checkpoint(source: Path, directory: Path, seed: int = 0) -> Path:
    """`source` with its stacked experts replaced by MXFP4 blocks and scales in OpenAI's layout: for
    x @ W of shape (E, in, out), `_blocks` (E, out, in / 32, 16) and `_scales` (E, out, in / 32)."""
    from quantcli.loaders import open_checkpoint

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    with open_checkpoint(source) as ckpt:
        for name in ckpt.tensor_names():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                n_expert, rows_in, cols_out = ckpt.tensor_info(name).shape
                tensors[name + "_blocks"] = rng.integers(0, 256, (n_expert, cols_out, rows_in // 32, 16), np.uint8)
                tensors[name + "_scales"] = rng.integers(119, 125, (n_expert, cols_out, rows_in // 32), np.uint8)
            else:
                tensors[name] = np.array(ckpt.read(name))
    write_file(directory / "model.safetensors", dict(sorted(tensors.items())), {"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "quantization_config": MXFP4_CONFIG}, indent=2))
    for extra in source.iterdir():
        if extra.suffix == ".json" and extra.name != "config.json":
            shutil.copy(extra, directory / extra.name)
    return directory


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> tuple[Path, Path]:
    """(BF16 checkpoint, its MXFP4 variant)."""
    root = tmp_path_factory.mktemp("gpt-oss")
    hf = make_gpt_oss_checkpoint(root / "hf", smollm2_dir)
    return hf, mxfp4_checkpoint(hf, root / "mxfp4")


@pytest.mark.slow
def test_bf16_checkpoint_equals_converter_and_llama_quantize(gpt_oss: tuple[Path, Path], tmp_path: Path) -> None:
    from gguf import GGUFReader
    from reference import convert_with_llamacpp, run_tool

    hf, _ = gpt_oss
    for out_type in OUT_TYPES:
        ref, ours = tmp_path / f"ref-{out_type}.gguf", tmp_path / f"ours-{out_type}.gguf"
        proc = convert_with_llamacpp(hf, ref, out_type)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = _cli(["convert", hf, "--type", out_type, "-o", ours])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _sha(ours) == _sha(ref), out_type
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "ours-q8_0.gguf")).tensors}
    assert types["blk.0.ffn_gate_exps.weight"] == "Q8_0" and types["blk.0.ffn_gate_exps.bias"] == "F32"
    assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.1.attn_sinks.weight"] == "F32"
    for recipe in ("Q4_K_M", "MXFP4_MOE"):
        ref, ours = tmp_path / f"ref-{recipe}.gguf", tmp_path / f"ours-{recipe}.gguf"
        proc = run_tool("llama-quantize", tmp_path / "ref-f32.gguf", ref, recipe, 2)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = _cli(["convert", hf, "--type", recipe, "-o", ours])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _sha(ours) == _sha(ref), recipe
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "ours-MXFP4_MOE.gguf")).tensors}
    assert types["blk.1.ffn_up_exps.weight"] == "MXFP4" and types["blk.1.attn_q.weight"] == "Q8_0"


@pytest.mark.slow
def test_mxfp4_checkpoint_equals_converter_and_llama_quantize(gpt_oss: tuple[Path, Path], tmp_path: Path) -> None:
    """The experts pass through as MXFP4 at every converter type; a float type is labelled MOSTLY_MXFP4_MOE.
    llama-quantize refuses to requantize them without --allow-requantize, and so does `convert`."""
    from gguf import GGUFReader, LlamaFileType
    from reference import convert_with_llamacpp, run_tool

    _, mx = gpt_oss
    for out_type in (*OUT_TYPES, "auto"):
        ref, ours = tmp_path / f"ref-{out_type}.gguf", tmp_path / f"ours-{out_type}.gguf"
        proc = convert_with_llamacpp(mx, ref, out_type)
        assert proc.returncode == 0, proc.stderr[-2000:]
        proc = _cli(["convert", mx, "--type", out_type, "-o", ours])
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _sha(ours) == _sha(ref), out_type
    reader = GGUFReader(str(tmp_path / "ours-bf16.gguf"))
    assert reader.fields["general.file_type"].contents() == LlamaFileType.MOSTLY_MXFP4_MOE
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down_exps.weight"] == "MXFP4" and types["blk.0.attn_q.weight"] == "BF16"

    ref, ours = tmp_path / "ref-mxfp4-moe.gguf", tmp_path / "ours-mxfp4-moe.gguf"
    assert run_tool("llama-quantize", tmp_path / "ref-bf16.gguf", ref, "MXFP4_MOE", 2).returncode == 0
    proc = _cli(["convert", mx, "--type", "MXFP4_MOE", "-o", ours])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _sha(ours) == _sha(ref)

    ref, ours = tmp_path / "ref-q4.gguf", tmp_path / "ours-q4.gguf"
    assert run_tool("llama-quantize", tmp_path / "ref-bf16.gguf", ref, "Q4_K_M", 2).returncode != 0
    proc = _cli(["convert", mx, "--type", "Q4_K_M", "-o", ours])
    assert proc.returncode == 5 and "already MXFP4" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not ours.exists()
    proc = run_tool("llama-quantize", "--allow-requantize", tmp_path / "ref-bf16.gguf", ref, "Q4_K_M", 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _cli(["quantize", tmp_path / "ours-bf16.gguf", ours, "Q4_K_M", "--allow-requantize"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _sha(ours) == _sha(ref)


@pytest.fixture(scope="module")
def gguf_files(gpt_oss: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our conversions (byte-identical to llama.cpp's, tested above): f32 and Q4_K_M of the BF16
    checkpoint, f32 of the MXFP4 one."""
    root = tmp_path_factory.mktemp("gpt-oss-gguf")
    hf, mx = gpt_oss
    out = {"f32": root / "f32.gguf", "q4": root / "q4_k_m.gguf", "mxfp4": root / "mxfp4-f32.gguf"}
    for source, out_type, path in ((hf, "f32", out["f32"]), (hf, "Q4_K_M", out["q4"]), (mx, "f32", out["mxfp4"])):
        proc = _cli(["convert", source, "--type", out_type, "-o", path])
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_greedy_matches_llama_simple(gguf_files: dict[str, Path]) -> None:
    """Sliding and full layers, sinks, YaRN, clamped SwiGLU experts: llama-simple's greedy text, also with
    the MXFP4 experts."""
    from reference import run_tool

    from quantcli.runtime import Model, load_tokenizer, open_source
    from quantcli.runtime.generate import greedy

    for path in (gguf_files["f32"], gguf_files["mxfp4"]):
        model, tokenizer = Model(open_source(path)), load_tokenizer(path)
        for prompt in ("def f(x):\n    return  x + 1", "Numbers 2024 and 🙂 日本"):
            proc = run_tool("llama-simple", "-m", path, "-n", 8, prompt)
            assert proc.returncode == 0, proc.stderr[-2000:]
            ours = greedy(model, tokenizer, prompt, 8)
            printed = tokenizer.decode(ours["prompt_tokens"]) + ours["text"]
            assert proc.stdout.rstrip("\n") == printed.rstrip("\n"), (path.name, prompt)


@pytest.mark.slow
def test_perplexity_kld_and_imatrix_match_llama_cpp(gguf_files: dict[str, Path], tmp_path: Path) -> None:
    """n_ctx 128 over a window of 8: PPL within 0.2 % of llama-perplexity's, the Q4_K_M's KLD within 5 %;
    imatrix entries and per-expert counts equal llama-imatrix's, per-expert sums within 1 %."""
    from gguf import GGUFReader
    from reference import perplexity_chunk_values, run_tool
    from spm_fixture import mixed_text

    text = tmp_path / "mixed.txt"
    text.write_text(mixed_text(), encoding="utf-8")
    f32, q4 = gguf_files["f32"], gguf_files["q4"]
    window = ["-f", text, "-c", 128, "--chunks", 2, "-t", 2]
    ref_ppl = perplexity_chunk_values("-m", f32, *window, chunk=2)[0]
    proc = _cli(["eval", f32, "--text", text, "--ctx", 128, "--chunks", 2, "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert abs(json.loads(proc.stdout)["ppl"] / ref_ppl - 1) < 0.002, (json.loads(proc.stdout)["ppl"], ref_ppl)
    base = tmp_path / "base.kld"
    assert run_tool("llama-perplexity", "-m", f32, *window, "--kl-divergence-base", base).returncode == 0
    ref_kld = perplexity_chunk_values("-m", q4, *window, "--kl-divergence-base", base, "--kl-divergence", chunk=2)[4]
    proc = _cli(["eval", q4, "--text", text, "--ctx", 128, "--chunks", 2, "--base", f32, "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    kld = json.loads(proc.stdout)["kld_mean"]
    assert kld > 0 and abs(kld / ref_kld - 1) < 0.05, (kld, ref_kld)

    ref_path, our_path = tmp_path / "ref.imatrix.gguf", tmp_path / "ours.imatrix.gguf"
    assert run_tool("llama-imatrix", "-m", f32, *window, "-o", ref_path).returncode == 0
    proc = _cli(["imatrix", f32, "--text", text, "--ctx", 128, "--chunks", 2, "-o", our_path])
    assert proc.returncode == 0, proc.stderr[-2000:]

    def read(path: Path) -> dict[str, np.ndarray]:
        tensors = {t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(str(path)).tensors}
        return {n: v.reshape(tensors[n.rsplit(".", 1)[0] + ".counts"].size, -1) for n, v in tensors.items()}

    ref, ours = read(ref_path), read(our_path)
    assert sorted(ours) == sorted(ref) and "blk.1.ffn_up_exps.weight.in_sum2" in ref
    for name in ref:
        assert ours[name].shape == ref[name].shape, name
        if name.endswith(".counts"):
            assert np.array_equal(ours[name], ref[name]), name
            continue
        for expert, (mine, theirs) in enumerate(zip(ours[name], ref[name], strict=True)):
            rel = np.linalg.norm(mine - theirs) / max(float(np.linalg.norm(theirs)), 1e-30)
            assert rel < 1e-2, (name, expert, rel)


# ---- no llama.cpp ------------------------------------------------------------------------------------------


def _synthetic_gpt_oss(directory: Path, bpe_dir: Path, hidden: int = 64, ff: int = 64, n_expert: int = 4) -> Path:
    """A GptOssForCausalLM checkpoint of random BF16 weights written without torch (names sorted, as
    transformers writes them), 2 layers, 2 heads of 32."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = 49152
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (64, hidden), p + "self_attn.q_proj.bias": (64,),
            p + "self_attn.k_proj.weight": (32, hidden), p + "self_attn.k_proj.bias": (32,),
            p + "self_attn.v_proj.weight": (32, hidden), p + "self_attn.v_proj.bias": (32,),
            p + "self_attn.o_proj.weight": (hidden, 64), p + "self_attn.o_proj.bias": (hidden,),
            p + "self_attn.sinks": (2,), p + "mlp.router.weight": (n_expert, hidden), p + "mlp.router.bias": (n_expert,),
            p + "mlp.experts.gate_up_proj": (n_expert, hidden, 2 * ff), p + "mlp.experts.gate_up_proj_bias": (n_expert, 2 * ff),
            p + "mlp.experts.down_proj": (n_expert, ff, hidden), p + "mlp.experts.down_proj_bias": (n_expert, hidden),
        }  # fmt: skip
    tensors = {n: rng.standard_normal(s).astype(ml_dtypes.bfloat16) for n, s in sorted(shapes.items())}
    write_file(directory / "model.safetensors", tensors, {"format": "pt"})
    config = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 32, "vocab_size": vocab, "num_local_experts": n_expert, "num_experts_per_tok": 2,
        "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"], "bos_token_id": 1,
        "eos_token_id": 2,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    _copy_tokenizer(bpe_dir, directory)
    return directory


def test_experts_split_and_transposed_as_the_converter_does(tmp_path: Path, smollm2_dir: Path) -> None:
    """gate_up_proj (E, n_embd, 2 n_ff): gate = the even columns, up = the odd ones, each transposed to
    (E, n_ff, n_embd); down_proj transposed; the biases split the same way; the sinks gain `.weight`. The
    tensors come where the HF tensor does, gate before up; the YaRN defaults of GptOssConfig apply."""
    from quantcli.sources.hf import open_converter_view

    hf = _synthetic_gpt_oss(tmp_path / "hf", smollm2_dir)
    with open_converter_view(hf, "f32") as view:
        names = [t.name for t in view.tensors]
        assert names[:13] == [
            "output.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down_exps.weight",
            "blk.0.ffn_down_exps.bias", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
            "blk.0.ffn_gate_exps.bias", "blk.0.ffn_up_exps.bias", "blk.0.ffn_gate_inp.bias",
            "blk.0.ffn_gate_inp.weight", "blk.0.post_attention_norm.weight", "blk.0.attn_k.bias",
        ]
        assert "blk.1.attn_sinks.weight" in names
        by_name = {t.name: t for t in view.tensors}
        gate_up = view.ckpt.read("model.layers.1.mlp.experts.gate_up_proj").astype(np.float32)
        down = view.ckpt.read("model.layers.1.mlp.experts.down_proj").astype(np.float32)
        bias = view.ckpt.read("model.layers.1.mlp.experts.gate_up_proj_bias").astype(np.float32)
        expected = {
            "ffn_gate_exps.weight": gate_up[:, :, ::2].transpose(0, 2, 1),
            "ffn_up_exps.weight": gate_up[:, :, 1::2].transpose(0, 2, 1),
            "ffn_down_exps.weight": down.transpose(0, 2, 1),
            "ffn_gate_exps.bias": bias[:, ::2],
            "ffn_up_exps.bias": bias[:, 1::2],
        }
        for name, values in expected.items():
            tensor = by_name["blk.1." + name]
            assert tensor.shape == values.shape, name
            assert np.array_equal(tensor.produce(), values), name
        kv = view.metadata.values()
        assert kv["gpt-oss.expert_count"] == 4 and kv["gpt-oss.expert_feed_forward_length"] == 64
        assert kv["gpt-oss.attention.sliding_window"] == 8
        assert kv["gpt-oss.rope.scaling.factor"] == 32.0 and kv["gpt-oss.rope.scaling.original_context_length"] == 4096
        assert kv["gpt-oss.rope.freq_base"] == 150000.0


def test_mxfp4_experts_hold_the_checkpoint_values(tmp_path: Path, smollm2_dir: Path) -> None:
    """Repacked to ggml's block_mxfp4, each expert decodes (gguf-py's dequantizer) to what transformers'
    own MXFP4 decoder (convert_moe_packed_tensors) makes of the checkpoint: gate the even rows of gate_up,
    up the odd ones."""
    require_module = __import__("reference").require_module
    torch = require_module("torch")
    mxfp4 = require_module("transformers.integrations.mxfp4")
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from quantcli.sources.hf import open_converter_view

    mx = mxfp4_checkpoint(_synthetic_gpt_oss(tmp_path / "hf", smollm2_dir), tmp_path / "mx", seed=3)
    with open_converter_view(mx, "bf16") as view:
        by_name = {t.name: t for t in view.tensors}
        assert [t.name for t in view.tensors][:3] == [
            "blk.0.ffn_down_exps.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
        ]  # generated first, before every checkpoint tensor
        for hf_base, parts in (("gate_up_proj", ("gate", "up")), ("down_proj", ("down",))):
            blocks = view.ckpt.read(f"model.layers.1.mlp.experts.{hf_base}_blocks")
            scales = view.ckpt.read(f"model.layers.1.mlp.experts.{hf_base}_scales")
            decoded = mxfp4.convert_moe_packed_tensors(
                torch.from_numpy(np.array(blocks)), torch.from_numpy(np.array(scales)), dtype=torch.float32
            ).numpy().swapaxes(1, 2)  # returned as x @ W, (E, in, rows)
            for index, part in enumerate(parts):
                tensor = by_name[f"blk.1.ffn_{part}_exps.weight"]
                assert tensor.type == GGMLQuantizationType.MXFP4
                raw = tensor.transform(tensor.read())
                values = dequantize(raw, GGMLQuantizationType.MXFP4).reshape(tensor.shape)
                assert np.array_equal(values, decoded[:, index :: len(parts)]), part
                assert np.array_equal(tensor.produce(), values), part


def test_awq_refuses_a_mixture_of_experts(tmp_path: Path, smollm2_dir: Path) -> None:
    """AWQ handles dense blocks only: stacked experts are refused (exit 5, one line) before the calibration
    text is read, and nothing is written (GPTQ calibrates them: tests/test_moe_calibration.py)."""
    hf = _synthetic_gpt_oss(tmp_path / "hf", smollm2_dir)
    for method, extra in (("awq-gptq", ["--type", "Q4_K_M"]), ("awq", ["--bits", 4])):
        out = tmp_path / f"{method}-out"
        proc = _cli(["convert", hf, *extra, "--method", method, "-o", out])
        assert proc.returncode == 5, proc.stderr
        assert "mixture of experts" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_packed_formats_are_refused(tmp_path: Path, smollm2_dir: Path) -> None:
    """The router and the stacked experts are no Linear layers, which packed formats assume: exit 5, one
    line, nothing written (--dry-run included)."""
    hf = _synthetic_gpt_oss(tmp_path / "hf", smollm2_dir)
    for fmt, extra in (("ct", []), ("mlx", []), ("gptq", []), ("awq", []), ("ct", ["--dry-run"])):
        out = tmp_path / f"{fmt}-out"
        proc = _cli(["convert", hf, "--format", fmt, "--bits", 4, "--group-size", 32, *extra, "-o", f"{out}/"])
        assert proc.returncode == 5, proc.stderr
        assert "not Linear layers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.parametrize("damage", ["scales_shape", "no_scales"])
def test_malformed_mxfp4_experts_are_refused(tmp_path: Path, smollm2_dir: Path, damage: str) -> None:
    mx = mxfp4_checkpoint(_synthetic_gpt_oss(tmp_path / "hf", smollm2_dir), tmp_path / "mx")
    from quantcli.loaders import open_checkpoint

    with open_checkpoint(mx) as ckpt:
        tensors = {n: np.array(ckpt.read(n)) for n in ckpt.tensor_names()}
    name = "model.layers.1.mlp.experts.down_proj_scales"
    if damage == "scales_shape":
        tensors[name] = tensors[name][:, :, :1].copy()
    else:
        del tensors[name]
    write_file(mx / "model.safetensors", tensors, {"format": "pt"})
    out = tmp_path / "out.gguf"
    proc = _cli(["convert", mx, "--type", "bf16", "-o", out])
    assert proc.returncode == 4, proc.stderr
    assert "down_proj" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
