"""eval / generate / imatrix commands on a tiny random llama GGUF written here (no llama.cpp, no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from vocab_helpers import gpt2_byte_alphabet

REPO = Path(__file__).resolve().parent.parent
N_EMBD, N_HEAD, N_KV, N_FF, N_LAYER = 64, 4, 2, 96, 2


def tiny_gguf_and_text(directory: Path) -> tuple[Path, Path]:
    """The tiny random F32 llama GGUF and the eval text, written into `directory`."""
    _tiny_gguf(directory / "tiny-f32.gguf")
    (directory / "text.txt").write_text(TEXT, encoding="utf-8")
    return directory / "tiny-f32.gguf", directory / "text.txt"


def _tiny_gguf(path: Path, qtype: GGMLQuantizationType = GGMLQuantizationType.F32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(gpt2_byte_alphabet())
    w.add_token_types([1] * 256)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    tensors: dict[str, np.ndarray] = {}

    def put(name: str, shape: tuple[int, ...], scale: float = 0.2) -> None:
        arr = (rng.standard_normal(shape) * scale).astype(np.float32)
        if name.endswith("norm.weight"):
            arr = (1.0 + arr).astype(np.float32)
        tensors[name] = arr
        if arr.ndim == 2 and qtype != GGMLQuantizationType.F32:
            from quantcli.quants import quantize

            w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, arr)

    put("token_embd.weight", (256, N_EMBD), 0.1)  # logits of order 1: a PPL near the vocab size
    put("output_norm.weight", (N_EMBD,), 0.1)
    hd = N_EMBD // N_HEAD
    for il in range(N_LAYER):
        p = f"blk.{il}."
        put(p + "attn_norm.weight", (N_EMBD,), 0.1)
        put(p + "attn_q.weight", (N_EMBD, N_EMBD))
        put(p + "attn_k.weight", (N_KV * hd, N_EMBD))
        put(p + "attn_v.weight", (N_KV * hd, N_EMBD))
        put(p + "attn_output.weight", (N_EMBD, N_EMBD))
        put(p + "ffn_norm.weight", (N_EMBD,), 0.1)
        put(p + "ffn_gate.weight", (N_FF, N_EMBD))
        put(p + "ffn_up.weight", (N_FF, N_EMBD))
        put(p + "ffn_down.weight", (N_EMBD, N_FF))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


TEXT = (
    "The river bends slowly across the plain, and the old mill stands where it always stood. "
    "Bread rises in the warm kitchen while rain taps on the window and the kettle starts to sing. "
) * 3


def _cli(args: list[object], expect: int = 0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args], "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == expect, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    d = tmp_path_factory.mktemp("tiny")
    path = d / "tiny-f32.gguf"
    tensors = _tiny_gguf(path)
    text = d / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return path, tensors, text


def test_eval_against_itself_has_zero_kld(tiny: tuple[Path, dict, Path]) -> None:
    model, _, text = tiny
    ppl = _cli(["eval", model, "--text", text, "--ctx", 64, "--chunks", 3])
    assert ppl["chunks"] == 3 and ppl["tokens_scored"] == 3 * (64 - 1 - 32)
    assert 1.0 < ppl["ppl"] < 1e4
    kld = _cli(["eval", model, "--text", text, "--ctx", 64, "--chunks", 3, "--base", model])
    assert kld["same_top"] == 1.0
    assert kld["kld_mean"] < 1e-4  # only the uint16 coding of the base log-probs remains
    assert kld["ppl"] == pytest.approx(ppl["ppl"], rel=1e-6)
    assert kld["ppl_base"] == pytest.approx(ppl["ppl"], rel=1e-3)


def test_eval_of_a_quantized_copy_has_small_positive_kld(
    tiny: tuple[Path, dict, Path], tmp_path: Path
) -> None:
    from quantcli.runtime.verify import verify

    model, _, text = tiny
    q8 = tmp_path / "tiny-q8_0.gguf"
    _tiny_gguf(q8, GGMLQuantizationType.Q8_0)
    result = verify(model, q8, text=text, chunks=2, n_ctx=64, max_kld=1e-9)
    assert 0 < result["kld_mean"] < 0.01
    assert result["top1_agreement"] > 0.8
    assert result["passed"] is False  # the gate is applied
    assert verify(model, q8, text=text, chunks=2, n_ctx=64, max_kld=0.5)["passed"] is True


def test_imatrix_sums_the_squares_of_the_layer_inputs(tiny: tuple[Path, dict, Path], tmp_path: Path) -> None:
    model, tensors, text = tiny
    out = tmp_path / "im.gguf"
    summary = _cli(["imatrix", model, "--text", text, "--ctx", 64, "--chunks", 2, "-o", out])
    assert summary["entries"] == N_LAYER * 7
    r = GGUFReader(str(out))
    data = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in r.tensors}
    kv = {k: f.contents() for k, f in r.fields.items()}
    assert (
        kv["general.type"] == "imatrix" and kv["imatrix.chunk_count"] == 2 and kv["imatrix.chunk_size"] == 64
    )
    assert "general.architecture" not in kv
    assert data["blk.1.ffn_down.weight.counts"].tolist() == [128.0]
    assert data["blk.1.ffn_down.weight.in_sum2"].size == N_FF
    # layer 0's q/k/v input is rmsnorm(embedding) * attn_norm: computable without the runtime
    ids = np.frombuffer(TEXT.encode("utf-8"), dtype=np.uint8)[:128].astype(np.int64)
    x = tensors["token_embd.weight"][ids]
    h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-5) * tensors["blk.0.attn_norm.weight"]
    expected = (h.astype(np.float64) ** 2).sum(axis=0)
    for name in ("attn_q", "attn_k", "attn_v"):
        got = data[f"blk.0.{name}.weight.in_sum2"]
        assert np.allclose(got, expected, rtol=1e-4), name
    # refuses to overwrite without --force
    err = _cli(["imatrix", model, "--text", text, "--ctx", 64, "-o", out], expect=6)
    assert err["ok"] is False


def test_generate_is_greedy_and_deterministic(tiny: tuple[Path, dict, Path]) -> None:
    model, _, _ = tiny
    a = _cli(["generate", model, "--prompt", "The river", "-n", 8])
    b = _cli(["generate", model, "--prompt", "The river", "-n", 8])
    assert a["prompt_tokens"] == list(b"The river")
    assert len(a["tokens"]) == 8 and a["tokens"] == b["tokens"]
    from quantcli.runtime import open_model

    m, _ = open_model(model)
    logits = m.forward(np.array(a["prompt_tokens"]), m.new_cache(32))
    assert a["tokens"][0] == int(np.argmax(logits[-1]))


def test_too_short_text_is_an_input_error(tiny: tuple[Path, dict, Path], tmp_path: Path) -> None:
    model, _, _ = tiny
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    err = _cli(["eval", model, "--text", short, "--ctx", 64], expect=4)
    assert "at least 128 are needed" in err["error"]
    missing = _cli(["eval", tmp_path / "nope.gguf", "--text", short], expect=3)
    assert missing["ok"] is False
