"""Our `convert` against llama.cpp's own convert_hf_to_gguf.py on the same inputs: identical files
(same tensors, order, shapes, types, bytes; same keys, order and values but scripts/reference_convert.py's
listed COSMETIC_KEYS).

The reference outputs are cached under $QUANTCLI_CACHE/reference-gguf/<key>, the key hashing the input
files, the converter script and the transformers version, so the slow converter (~10 s a run) runs once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import reference_convert  # noqa: E402
from reference import require_module  # noqa: E402
from tiny_models import BUILT_ARCHS  # noqa: E402

from quantcli.arch import get_arch  # noqa: E402
from quantcli.engine import convert_model  # noqa: E402

pytestmark = pytest.mark.slow


def _cache_root() -> Path:
    return Path(os.environ.get("QUANTCLI_CACHE") or Path.home() / ".cache" / "quantcli") / "reference-gguf"


def _input_key(model_dir: Path, outtype: str) -> str:
    transformers = require_module("transformers", "make install-ref")

    digest = hashlib.sha256()
    digest.update(model_dir.name.encode())  # general.name falls back to the directory name
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(block)
    script = reference_convert.llamacpp_src() / "convert_hf_to_gguf.py"
    digest.update(script.read_bytes())
    digest.update(transformers.__version__.encode())
    digest.update(outtype.encode())
    return digest.hexdigest()[:24]


def reference_gguf(model_dir: Path, outtype: str) -> Path:
    out = _cache_root() / _input_key(model_dir, outtype) / f"{model_dir.name}-{outtype}.gguf"
    if not out.is_file():
        # One entry per model and outtype: drop the one an older input, converter or transformers made.
        for older in _cache_root().glob(f"*/{glob.escape(out.name)}"):
            shutil.rmtree(older.parent)
        reference_convert.run_reference(model_dir, outtype, out)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _assert_same(ours: Path, ref: Path) -> None:
    """Byte-identical files; otherwise the key/tensor-wise diff (slow: GGUFReader) explains why."""
    if _sha256(ours) == _sha256(ref):
        return
    diffs = reference_convert.compare_gguf(ours, ref)
    assert diffs == [], "\n".join(diffs[:30])
    # Equal up to COSMETIC_KEYS: fine only when that list says why (it is empty today).
    assert reference_convert.COSMETIC_KEYS, "files differ in bytes but compare_gguf found no difference"


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_smollm2_matches_reference(smollm2_dir: Path, tmp_path: Path, outtype: str) -> None:
    ref = reference_gguf(smollm2_dir, outtype)
    ours = tmp_path / f"ours-{outtype}.gguf"
    result = convert_model(smollm2_dir, ours, out_type=outtype)
    _assert_same(ours, ref)
    assert result["bytes"] == ref.stat().st_size
    assert result["sha256"] == _sha256(ref)
    ours.unlink()


def test_auto_keeps_bf16(smollm2_dir: Path, tmp_path: Path) -> None:
    # --type auto on a BF16 checkpoint is the converter's auto (= bf16): never a silent F16 downcast.
    ref = reference_gguf(smollm2_dir, "bf16")
    ours = tmp_path / "auto.gguf"
    result = convert_model(smollm2_dir, ours)
    assert result["file_type"] == "BF16" and result["tensor_types"] == {"BF16": 211, "F32": 61}
    assert result["sha256"] == _sha256(ref)


# ---- small random models of the other architectures, written here, converted by both ----

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 64, 128, 4, 2, 2


def _bf16_tensor(
    rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.05, dtype: str = "bfloat16"
):
    torch = require_module("torch", "make install-ref")

    return torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32)).to(getattr(torch, dtype))


def _synthetic(tmp: Path, smollm2_dir: Path, arch: str) -> Path:
    """A 2-layer random model of `arch` with SmolLM2's tokenizer files (vocab 49152).

    Only the mistral config names its `model_type`. With transformers 5, AutoTokenizer picks the tokenizer
    class from model_type (Qwen2Tokenizer etc.), which re-tokenizes the converter's probe text differently
    from SmolLM2's tokenizer.json and the converter stops ("BPE pre-tokenizer was not recognized"). Without
    model_type AutoConfig fails and the converter reads config.json as is, so those configs spell out
    every value the converter reads (no reliance on transformers' class defaults).
    """
    torch = require_module("torch", "make install-ref")
    from safetensors.torch import save_file

    rng = np.random.default_rng(zlib.crc32(arch.encode()))
    # No architecture name in the directory name: AutoConfig would guess model_type from it.
    out = tmp / f"tiny-model-{zlib.crc32(arch.encode()) % 1000}"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / name, out / name)
    vocab = 49152
    head_dim = HIDDEN // HEADS
    cfg: dict = {
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    t: dict = {
        "model.embed_tokens.weight": _bf16_tensor(rng, (vocab, HIDDEN)),
        "model.norm.weight": _bf16_tensor(rng, (HIDDEN,)),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = _bf16_tensor(rng, (HIDDEN,))
        t[p + "post_attention_layernorm.weight"] = _bf16_tensor(rng, (HIDDEN,))
        t[p + "self_attn.o_proj.weight"] = _bf16_tensor(rng, (HIDDEN, HEADS * head_dim))
        t[p + "mlp.down_proj.weight"] = _bf16_tensor(rng, (HIDDEN, FFN))
        if arch.startswith("phi3"):
            t[p + "self_attn.qkv_proj.weight"] = _bf16_tensor(
                rng, ((HEADS + 2 * KV_HEADS) * head_dim, HIDDEN)
            )
            t[p + "mlp.gate_up_proj.weight"] = _bf16_tensor(rng, (2 * FFN, HIDDEN))
        else:
            t[p + "self_attn.q_proj.weight"] = _bf16_tensor(rng, (HEADS * head_dim, HIDDEN))
            t[p + "self_attn.k_proj.weight"] = _bf16_tensor(rng, (KV_HEADS * head_dim, HIDDEN))
            t[p + "self_attn.v_proj.weight"] = _bf16_tensor(rng, (KV_HEADS * head_dim, HIDDEN))
            t[p + "mlp.gate_proj.weight"] = _bf16_tensor(rng, (FFN, HIDDEN))
            t[p + "mlp.up_proj.weight"] = _bf16_tensor(rng, (FFN, HIDDEN))
        if arch == "qwen2":
            for proj, rows in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                t[p + f"self_attn.{proj}_proj.bias"] = _bf16_tensor(rng, (rows * head_dim,))
        if arch in ("qwen3", "gemma3", "gemma3-f16"):
            t[p + "self_attn.q_norm.weight"] = _bf16_tensor(rng, (head_dim,))
            t[p + "self_attn.k_norm.weight"] = _bf16_tensor(rng, (head_dim,))
        if arch.startswith("gemma3"):
            t[p + "pre_feedforward_layernorm.weight"] = _bf16_tensor(rng, (HIDDEN,))
            t[p + "post_feedforward_layernorm.weight"] = _bf16_tensor(rng, (HIDDEN,))
    if arch == "mistral":
        cfg.update(
            architectures=["MistralForCausalLM"],
            model_type="mistral",
            rope_theta=1e6,
            tie_word_embeddings=False,
        )
        t["lm_head.weight"] = _bf16_tensor(rng, (vocab, HIDDEN))
    elif arch == "llama3":
        cfg.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            rope_theta=500000.0,
            tie_word_embeddings=True,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
    elif arch == "qwen2":
        cfg.update(architectures=["Qwen2ForCausalLM"], rope_theta=1e6, tie_word_embeddings=True)
    elif arch == "qwen3":
        cfg.update(
            architectures=["Qwen3ForCausalLM"],
            rope_theta=5e5,
            head_dim=head_dim,
            tie_word_embeddings=True,
            # (yarn scaling is not tested: transformers 5.23's AutoTokenizer crashes on it without model_type)
        )
    elif arch.startswith("gemma3"):
        cfg.update(
            architectures=["Gemma3ForCausalLM"],
            head_dim=head_dim,
            rope_theta=1e6,
            rope_local_base_freq=10000.0,
            tie_word_embeddings=True,
            # more embedding rows than tokens: the converter trims token_embd to the tokenizer's size
            vocab_size=vocab + 64,
            sliding_window=512,
            query_pre_attn_scalar=head_dim,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
        )
        t["model.embed_tokens.weight"] = _bf16_tensor(rng, (vocab + 64, HIDDEN))
        t["lm_head.weight"] = t["model.embed_tokens.weight"]
    elif arch.startswith("phi3"):
        cfg.update(
            architectures=["Phi3ForCausalLM"],
            rope_theta=10000.0,
            original_max_position_embeddings=4096,
            tie_word_embeddings=False,
            sliding_window=2047,
        )
        t["lm_head.weight"] = _bf16_tensor(rng, (vocab, HIDDEN))
        if arch == "phi3-long":  # Phi-3-128k style: rope factor tensors + attention factor key
            # model_type needed: transformers 5.23 cannot standardise rope scaling of a typeless config
            cfg.update(
                model_type="phi3",
                max_position_embeddings=131072,
                rope_scaling={
                    "type": "longrope",
                    "long_factor": [1.0 + 0.37 * i for i in range(head_dim // 2)],
                    "short_factor": [1.0 + 0.01 * i for i in range(head_dim // 2)],
                },
            )
    if arch.endswith("-f16"):  # an F16 checkpoint: auto picks F16, gemma's +1 is done in float16
        t = {k: v.to(torch.float16) for k, v in t.items()}
        cfg["torch_dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous().clone() for k, v in t.items()}, str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize(
    "arch", ["mistral", "llama3", "qwen2", "qwen3", "gemma3", "gemma3-f16", "phi3", "phi3-long"]
)
def test_other_architectures_match_reference(smollm2_dir: Path, tmp_path: Path, arch: str) -> None:
    model = _synthetic(tmp_path, smollm2_dir, arch)
    outtype = {"qwen2": "q8_0", "phi3": "q8_0", "gemma3-f16": "auto"}.get(arch, "bf16")
    assert get_arch(json.loads((model / "config.json").read_text())) is not None
    ref = reference_gguf(model, outtype)
    ours = tmp_path / "ours.gguf"
    convert_model(model, ours, out_type=outtype)
    _assert_same(ours, ref)


@pytest.mark.parametrize("outtype", ["f32", "bf16", "q8_0"])
@pytest.mark.parametrize("arch", BUILT_ARCHS)
def test_transformers_built_archs_match_reference(bf16_arch_checkpoint, tmp_path: Path, arch: str, outtype: str) -> None:
    """Checkpoints saved by transformers from the architecture's own config class (so config.json holds
    what that class writes, e.g. Gemma 2's layer_types, SmolLM3's no_rope_layers), in bf16."""
    model = bf16_arch_checkpoint(arch)
    ref = reference_gguf(model, outtype)
    ours = tmp_path / "ours.gguf"
    result = convert_model(model, ours, out_type=outtype)
    _assert_same(ours, ref)
    assert result["sha256"] == _sha256(ref)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """Raw safetensors writer (keeps BF16 bytes as they are): name -> (dtype, shape, data)."""
    header: dict = {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little") + blob)
        for _, _, data in tensors.values():
            fh.write(data)


def test_sharded_checkpoint_matches_reference(smollm2_dir: Path, tmp_path: Path) -> None:
    """SmolLM2 split into 3 shards (+ index) in an interleaved way: the converter's shard-then-name order."""
    from quantcli.loaders import open_checkpoint

    model = tmp_path / "SmolLM2-sharded"
    model.mkdir()
    for path in smollm2_dir.iterdir():
        if path.is_file() and path.suffix == ".json" or path.name == "tokenizer.json":
            shutil.copy(path, model / path.name)
    shards: dict[str, dict] = {f"model-0000{i}-of-00003.safetensors": {} for i in (1, 2, 3)}
    weight_map = {}
    with open_checkpoint(smollm2_dir) as ckpt:
        for i, name in enumerate(ckpt.tensor_names()):
            shard = f"model-0000{3 - i % 3}-of-00003.safetensors"
            info = ckpt.tensor_info(name)
            shards[shard][name] = (info.dtype, info.shape, ckpt.read(name).tobytes())
            weight_map[name] = shard
    for shard, tensors in shards.items():
        _write_safetensors(model / shard, tensors)
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    ref = reference_gguf(model, "q8_0")
    ours = tmp_path / "ours.gguf"
    convert_model(model, ours, out_type="q8_0")
    _assert_same(ours, ref)


# BF16 bit patterns a real checkpoint can hold besides normal numbers: signed zeros, subnormals, infinities,
# the bare quiet NaN, NaNs with a payload and the quiet bit set, and signalling NaNs (quiet bit clear).
SPECIAL_BF16 = (0x0000, 0x8000, 0x0001, 0x807F, 0x0040, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7FC1, 0x7F81, 0xFFA5, 0x7FBF)


def test_bf16_stored_tensors_are_copied_as_the_converter_writes_them(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--type bf16 of a BF16 checkpoint: tensors without a transform, and q/k (whose permutation only moves
    rows), are copied from the checkpoint (no float32 round trip; q/k's rows moved as stored bits) and still
    equal the converter's bytes, special values included (its round trip quiets signalling NaNs); the
    norms (F32) take the float32 path."""
    from quantcli.engine import stream
    from quantcli.loaders import open_checkpoint

    model = _synthetic(tmp_path, smollm2_dir, "llama3")
    special = np.array(SPECIAL_BF16, dtype=np.uint16)
    tensors = {}
    with open_checkpoint(model) as ckpt:
        for name in ckpt.tensor_names():
            info = ckpt.tensor_info(name)
            bits = ckpt.read(name).view(np.uint16).copy().reshape(-1)
            if name.endswith(("gate_proj.weight", "q_proj.weight", "embed_tokens.weight", "norm.weight")):
                bits[: special.size] = special
                bits[-special.size :] = special[::-1]
            tensors[name] = (info.dtype, info.shape, bits.tobytes())
    _write_safetensors(model / "model.safetensors", tensors)
    copied: list[tuple[int, ...]] = []

    def spy(data: np.ndarray, qtype):  # type: ignore[no-untyped-def]
        copied.append(data.shape)
        return encode_stored(data, qtype)

    encode_stored = stream.encode_stored
    monkeypatch.setattr(stream, "encode_stored", spy)
    ours = tmp_path / "ours.gguf"
    result = convert_model(model, ours, out_type="bf16")
    # token_embd and, per layer, q, k (rows permuted), v, o, gate, up and down are copied; the norms and
    # llama3's rope_freqs are F32
    assert len(copied) == 1 + 7 * LAYERS
    assert result["tensor_types"] == {"BF16": 1 + 7 * LAYERS, "F32": 2 + 2 * LAYERS}
    _assert_same(ours, reference_gguf(model, "bf16"))
