"""A small synthetic llama GGUF (F16) that llama-quantize, llama-imatrix and quantcli all accept.

Every row length is a multiple of 256 (no fallbacks), 16 layers (n/16 = 1, n/8 = 2, 7n/8 = 14 and the
use_more_bits stripes all occur), grouped-query attention with n_head/n_head_kv = 2, an untied
output.weight, and a byte-fallback SentencePiece vocabulary so llama-imatrix can tokenize any text.
Other tests import `build_synthetic_gguf`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

SYNTH = {
    "n_layer": 16,
    "n_embd": 256,
    "n_ff": 512,
    "n_head": 4,
    "n_head_kv": 2,
    "n_vocab": 512,
    "n_expert": 0,
}


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["\u2581" + c for c in letters] + list(letters)
    words += ["\u2581" + a + b for a in "aeiost" for b in letters]
    for w in words:
        if len(tokens) >= n_vocab:
            break
        tokens.append(w)
        types.append(1)
    while len(tokens) < n_vocab:
        tokens.append(f"<extra_{len(tokens)}>")
        types.append(4)  # USER_DEFINED
    scores = [0.0] * 259 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, types


def build_synthetic_gguf(
    path: Path,
    *,
    seed: int = 0,
    tied: bool = False,
    dtype: str = "f16",
    extra: dict[str, np.ndarray] | None = None,
    **sizes: int,
) -> Path:
    """`sizes` overrides SYNTH (n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_expert); dtype f16 or f32.

    n_expert > 0 makes a Mixtral-style MoE: ffn_gate_inp + 3-D ffn_{gate,up,down}_exps, 2 experts used.
    """
    cfg = dict(SYNTH)
    unknown = set(sizes) - set(cfg)
    assert not unknown, f"unknown sizes {unknown}"
    cfg.update(sizes)
    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_vocab = cfg["n_embd"], cfg["n_ff"], cfg["n_vocab"]
    head_dim = n_embd // cfg["n_head"]
    kv_dim = head_dim * cfg["n_head_kv"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic-llama")
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(cfg["n_layer"])
    w.add_feed_forward_length(n_ff)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg["n_head"])
    w.add_head_count_kv(cfg["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1 if dtype == "f16" else 0)
    w.add_vocab_size(n_vocab)
    if cfg["n_expert"]:
        w.add_expert_count(cfg["n_expert"])
        w.add_expert_used_count(2)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    tokens, scores, types = _vocab(n_vocab)
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_quantization_version(2)

    def mat(rows: int, cols: int, scale: float = 0.05) -> np.ndarray:
        x = rng.standard_normal((rows, cols), dtype=np.float32) * scale
        # A few outlier columns, like real activations/weights, so imatrix weighting matters.
        x[:, rng.integers(0, cols, 3)] *= 6
        return x.astype(np.float16) if dtype == "f16" else x

    def experts(rows: int, cols: int) -> np.ndarray:
        return np.stack([mat(rows, cols) for _ in range(cfg["n_expert"])])

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 0.5))
    w.add_tensor("output_norm.weight", norm(n_embd))
    if not tied:
        w.add_tensor("output.weight", mat(n_vocab, n_embd))
    for i in range(cfg["n_layer"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        w.add_tensor(p + "attn_q.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, n_embd))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, n_embd))
        w.add_tensor(p + "attn_output.weight", mat(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        if cfg["n_expert"]:
            w.add_tensor(p + "ffn_gate_inp.weight", mat(cfg["n_expert"], n_embd).astype(np.float32))
            w.add_tensor(p + "ffn_gate_exps.weight", experts(n_ff, n_embd))
            w.add_tensor(p + "ffn_up_exps.weight", experts(n_ff, n_embd))
            w.add_tensor(p + "ffn_down_exps.weight", experts(n_embd, n_ff))
            continue
        w.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_synthetic_gguf_reads_back(tmp_path: Path) -> None:
    from quantcli.loaders.gguf import GGUFFile

    path = build_synthetic_gguf(tmp_path / "synth.gguf")
    with GGUFFile(path) as f:
        assert f.architecture == "llama"
        assert f.get("llama.block_count") == SYNTH["n_layer"]
        assert len(f.tensors) == 3 + 9 * SYNTH["n_layer"]
        q = f.tensors["blk.3.attn_k.weight"]
        assert q.ne == (256, 128) and q.type == gguf.GGMLQuantizationType.F16
        assert f.tensor_f32("blk.3.attn_k.weight").shape == (128, 256)
        assert f.get("tokenizer.ggml.tokens")[259] == "\u2581a"
