"""Tiny random llama checkpoints and an on-disk Hugging Face hub cache, for the batch and hub tests.

`tiny_llama(dir, seed)` writes an HF-style BF16 LlamaForCausalLM (hidden 64, 2 layers, tied embeddings)
with a 320-piece SentencePiece tokenizer trained here in ~30 ms (the converter's SPM path needs no
pre-tokenizer hash), so a conversion takes ~0.1 s and needs no fixture; `hub_cache(hf_home, repo, files)`
lays files out exactly as huggingface_hub stores them (models--org--name/{blobs,refs/main,snapshots/...}).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import ml_dtypes
import numpy as np
from tiny_models import llama_tensor_shapes

from quantcli.loaders import open_checkpoint

TINY = {"hidden": 64, "ffn": 128, "layers": 2, "heads": 2, "kv_heads": 1}
SPM_VOCAB = 320
_SPM_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization maps weights to a few bits per value, block by block.",
    "hello world 0123456789, llama.cpp and GGUF files!",
]


@functools.cache
def spm_model() -> bytes:
    """A small byte-fallback BPE SentencePiece model (single-threaded training: same bytes every time)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SPM_TEXT * 50), model_writer=buf, vocab_size=SPM_VOCAB, model_type="bpe",
        num_threads=1, byte_fallback=True, character_coverage=1.0, minloglevel=2,
    )
    return buf.getvalue()


def tiny_llama_config(vocab: int, architecture: str = "LlamaForCausalLM") -> dict[str, object]:
    return {
        "architectures": [architecture],
        "model_type": "llama",
        "hidden_size": TINY["hidden"],
        "intermediate_size": TINY["ffn"],
        "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["heads"],
        "num_key_value_heads": TINY["kv_heads"],
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name].astype(ml_dtypes.bfloat16)).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for data in blobs:
            fh.write(data)


def tiny_llama(directory: Path, seed: int, architecture: str = "LlamaForCausalLM") -> Path:
    """A random BF16 llama checkpoint in `directory` (created), deterministic for a given seed."""
    directory.mkdir(parents=True)
    (directory / "tokenizer.model").write_bytes(spm_model())
    vocab = SPM_VOCAB
    shapes = llama_tensor_shapes(
        hidden=TINY["hidden"], layers=TINY["layers"], heads=TINY["heads"], kv_heads=TINY["kv_heads"],
        ff=TINY["ffn"], vocab=vocab,
    )
    rng = np.random.default_rng(seed)
    tensors = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if len(shape) == 1:
            tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    write_bf16_safetensors(directory / "model.safetensors", tensors)
    (directory / "config.json").write_text(json.dumps(tiny_llama_config(vocab, architecture), indent=2))
    return directory


def hub_cache(hf_home: Path, repo: str, files: dict[str, Path | bytes], commit: str | None = None,
              tags: tuple[str, ...] = ()) -> Path:
    """Store `files` (name → source file or bytes) as huggingface_hub's cache does; return the snapshot dir.

    Blobs are named by the sha256 of their content (as the hub names LFS blobs), snapshot entries are
    relative symlinks into blobs/, refs/main (and refs/<tag>) hold the commit hash.
    """
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = commit or hashlib.sha1(repo.encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../../blobs") / blob.name)
    for ref in ("main", *tags):
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def test_tiny_llama_is_a_valid_checkpoint(tmp_path: Path) -> None:
    model = tiny_llama(tmp_path / "m", seed=1)
    with open_checkpoint(model) as ckpt:
        assert ckpt.architecture == "LlamaForCausalLM"
        assert ckpt.tensor_info("model.embed_tokens.weight").shape == (SPM_VOCAB, 64)
        assert len(ckpt.tensor_names()) == 2 + 9 * 2
        assert ckpt.read("model.norm.weight").dtype == ml_dtypes.bfloat16
    again = tiny_llama(tmp_path / "m2", seed=1)
    assert (again / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    other = tiny_llama(tmp_path / "m3", seed=2)
    assert (other / "model.safetensors").read_bytes() != (model / "model.safetensors").read_bytes()
