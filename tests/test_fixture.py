"""The SmolLM2 and synthetic fixtures (scripts/make_smollm2_fixture.py): layout, determinism, and the golden
check that llama.cpp's own tools turn our HF checkpoint back into the shipped Q4_1 GGUF byte for byte."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_smollm2_fixture.py"

# Pinned bytes: the fixture is deterministic. Change these only together with FIXTURE_VERSION in the script.
SMOLLM2_SHA256 = {
    "model.safetensors": "7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b",
    "tokenizer.json": "9af3bc1493e4c581ac79a50b351e4a7871b5c786e89eed5751b04d42c28c4053",
    "tokenizer_config.json": "4ec77d44f62efeb38d7e044a1db318f6a939438425312dfa333b8382dbad98df",
    "config.json": "1ede1552cecdaaad35aa4c6e15370f0d7ef6288e9a0296eb5bc53dd94a134ee1",
}
SYNTHETIC_SHA256 = {
    "model.safetensors": "abad3de4494e8db4b5c6465af951f8e6d245a128f5cd6fd64c9d0f8cc1a0df5a",
    "config.json": "f3379d7651df500f4c90a98fc82a6a55d1b7444d5504a73ad51a80263f280f2c",
}


def fixture_script():
    spec = importlib.util.spec_from_file_location("make_smollm2_fixture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(size))


def _fixture_path(*flags: str) -> Path:
    """Build (once, cached) the fixture the script makes with `flags`; its path."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--print-path"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def synthetic_dir() -> Path:
    return _fixture_path("--synthetic")


# ------------------------------------------------------------------------------------------ unit


def test_unpermute_inverts_the_converters_permute():
    script = fixture_script()
    rng = np.random.default_rng(0)
    for n_head, head_dim in ((9, 64), (3, 64), (4, 8)):
        hf = rng.standard_normal((n_head * head_dim, 5)).astype(np.float32)
        ggml_rows = script.permute_rows(hf, n_head)
        # convert_hf_to_gguf's LlamaModel.permute, written out: row 2j+t of a head = HF row t*hd/2 + j
        for head in range(n_head):
            for j in range(head_dim // 2):
                for t in range(2):
                    assert np.array_equal(
                        ggml_rows[head * head_dim + 2 * j + t], hf[head * head_dim + t * head_dim // 2 + j]
                    )
        assert np.array_equal(script.unpermute_rows(ggml_rows, n_head), hf)


def test_bf16_rounding_is_round_to_nearest_even():
    script = fixture_script()
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 1e-40], dtype=np.float32)
    bits = script.to_bf16_bits(x)
    # bf16 keeps 7 mantissa bits: 1+2^-8 is a tie -> even 1.0; 1+3*2^-8 is a tie -> even 1+2^-6 (0x3F82)
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, int(np.float32(1e-40).view(np.uint32) >> 16)]


# ------------------------------------------------------------------------------------ SmolLM2


@pytest.mark.slow
def test_smollm2_files_and_hf_layout(smollm2_dir: Path):
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (smollm2_dir / name).is_file(), name
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "bfloat16"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (
        576,
        1536,
        30,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["rope_theta"], config["rms_norm_eps"], config["vocab_size"]) == (100000, 1e-05, 49152)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)

    header = safetensors_header(smollm2_dir / "model.safetensors")
    header.pop("__metadata__")
    assert len(header) == 272 and "lm_head.weight" not in header
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    assert header["model.embed_tokens.weight"]["shape"] == [49152, 576]
    assert header["model.layers.0.self_attn.k_proj.weight"]["shape"] == [192, 576]
    assert header["model.layers.29.mlp.down_proj.weight"]["shape"] == [576, 1536]
    assert header["model.norm.weight"]["shape"] == [576]

    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")


@pytest.mark.slow
def test_smollm2_tokenizer_hashes_to_smollm(smollm2_dir: Path):
    from tokenizers import Tokenizer

    from quantcli.vocab.bpe import pre_tokenizer_hash
    from quantcli.vocab.pre_hashes import PRE_TOKENIZER_BY_HASH

    tokenizer = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    assert PRE_TOKENIZER_BY_HASH[pre_tokenizer_hash(tokenizer)] == "smollm"
    assert tokenizer.encode("Hello world! 123").ids == [19556, 905, 17, 216, 33, 34, 35]


@pytest.mark.slow
def test_smollm2_bytes_are_pinned_and_rerun_is_a_no_op(smollm2_dir: Path):
    for name, digest in SMOLLM2_SHA256.items():
        assert sha256(smollm2_dir / name) == digest, name
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--print-path"], check=True, capture_output=True, text=True
    )
    assert Path(out.stdout.strip().splitlines()[-1]) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_llamacpp_converter_and_quantize_give_back_the_shipped_q4_1(smollm2_dir: Path, tmp_path: Path):
    """convert_hf_to_gguf.py --outtype f16 on our checkpoint, then llama-quantize Q4_1: all 272 tensors equal
    the shipped file's (types and bytes). This fails if the Q/K de-permutation, a name, a layout or the BF16
    rounding were wrong, and shows the converter recognised our tokenizer (it stops otherwise)."""
    from reference import llamacpp_src, tool, tool_env

    f16 = tmp_path / "smollm2-f16.gguf"
    converted = subprocess.run(
        [
            sys.executable,
            str(llamacpp_src() / "convert_hf_to_gguf.py"),
            str(smollm2_dir),
            "--outtype",
            "f16",
            "--outfile",
            str(f16),
        ],
        capture_output=True,
        text=True,
    )
    assert converted.returncode == 0, converted.stderr[-3000:]
    q4_1 = tmp_path / "smollm2-q4_1.gguf"
    quantized = subprocess.run(
        [str(tool("llama-quantize")), str(f16), str(q4_1), "Q4_1", "2"],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert quantized.returncode == 0, quantized.stderr[-3000:]
    f16.unlink()

    shipped = gguf.GGUFReader(fixture_script().source_gguf())
    ours = {t.name: t for t in gguf.GGUFReader(q4_1).tensors}
    assert len(ours) == len(shipped.tensors) == 272
    for tensor in shipped.tensors:
        mine = ours[tensor.name]
        assert mine.tensor_type == tensor.tensor_type, tensor.name
        assert np.array_equal(np.asarray(mine.data).view(np.uint8), np.asarray(tensor.data).view(np.uint8)), (
            tensor.name
        )
    pre = gguf.GGUFReader(q4_1).fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[-1]).decode() == "smollm"


# ---------------------------------------------------------------------------------- synthetic


@pytest.mark.slow
def test_synthetic_rows_are_multiples_of_256_and_bytes_pinned(synthetic_dir: Path):
    config = json.loads((synthetic_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (256, 512, 8)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (
        4,
        2,
        49152,
    )
    header = safetensors_header(synthetic_dir / "model.safetensors")
    header.pop("__metadata__")
    assert "lm_head.weight" in header and len(header) == 3 + 8 * 9
    for name, entry in header.items():
        assert entry["dtype"] == "BF16"
        assert entry["shape"][-1] % 256 == 0, (name, entry["shape"])
    for name, digest in SYNTHETIC_SHA256.items():
        assert sha256(synthetic_dir / name) == digest, name
    assert sha256(synthetic_dir / "tokenizer.json") == SMOLLM2_SHA256["tokenizer.json"]


@pytest.mark.slow
def test_fixture_builds_in_a_fresh_cache_identically(tmp_path: Path, synthetic_dir: Path):
    """A second cache (sharing only the downloaded GGUF) builds the synthetic fixture to the same bytes, with
    no temporary directories left behind."""
    script = fixture_script()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    os.symlink(script.source_gguf(), downloads / script.GGUF_NAME)
    env = {**os.environ, "QUANTCLI_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--synthetic", "--print-path"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    built = Path(out.stdout.strip().splitlines()[-1])
    assert built == tmp_path / "fixtures" / script.SYNTHETIC_DIRNAME
    for name in script.FIXTURE_FILES:
        assert sha256(built / name) == sha256(synthetic_dir / name), name
    assert sorted(p.name for p in built.parent.iterdir()) == [script.SYNTHETIC_DIRNAME]


# ---------------------------------------------------------------------------------------- off-grid


@pytest.fixture(scope="session")
def smollm2_offgrid_dir() -> Path:
    return _fixture_path("--off-grid")


def _requantized_blocks(model_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every quantized tensor of the shipped GGUF re-quantized (same type, our byte-exact quantizer) from
    `model_dir`'s BF16 weights, per type: (tensors, tensors byte-identical, blocks, blocks byte-identical)."""
    from quantcli.loaders.safetensors import SafetensorsFile
    from quantcli.quants import quantize

    script = fixture_script()
    reader = gguf.GGUFReader(script.source_gguf())
    n_head = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    n_head_kv = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    weights = SafetensorsFile(model_dir / "model.safetensors")
    counts: dict[str, list[int]] = {}
    for tensor in reader.tensors:
        if script.block_steps(tensor) is None:
            continue
        values = np.asarray(weights.read(script.hf_name(tensor.name)), dtype=np.float32)
        if tensor.name.endswith("attn_q.weight"):
            values = script.permute_rows(values, n_head)
        elif tensor.name.endswith("attn_k.weight"):
            values = script.permute_rows(values, n_head_kv)
        shipped = np.asarray(tensor.data).view(np.uint8)
        _, block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
        ours = quantize(values, tensor.tensor_type).reshape(-1, block_bytes)
        equal = (ours == shipped.reshape(-1, block_bytes)).all(axis=1)
        c = counts.setdefault(tensor.tensor_type.name, [0, 0, 0, 0])
        c[0] += 1
        c[1] += bool(equal.all())
        c[2] += equal.size
        c[3] += int(equal.sum())
    return {name: (c[0], c[1], c[2], c[3]) for name, c in counts.items()}


@pytest.mark.slow
def test_offgrid_weights_are_off_the_shipped_grid(smollm2_dir: Path, smollm2_offgrid_dir: Path):
    """SmolLM2's weights re-quantize to the shipped Q4_1/Q8_0 bytes block for block; the off-grid variant's
    do not, while config and tokenizer are the same files."""
    original = _requantized_blocks(smollm2_dir)
    assert {t: (n, same == n, same_b == b) for t, (n, same, b, same_b) in original.items()} == {
        "Q4_1": (210, True, True),
        "Q8_0": (1, True, True),
    }
    moved = _requantized_blocks(smollm2_offgrid_dir)
    assert moved.keys() == {"Q4_1", "Q8_0"}
    for qtype, (tensors, same, blocks, same_blocks) in moved.items():
        assert same == 0, f"{qtype}: {same} of {tensors} tensors still byte-identical"
        # A block comes back only when the noise on its extreme weights vanished in the BF16 rounding (then
        # its scale is unchanged and every code rounds back). For Q8_0 that is common: BF16's spacing near a
        # block's largest value (2^-8 of it) exceeds half a Q8_0 step (1/254 of it).
        limit = 0.005 if qtype == "Q4_1" else 0.25
        assert same_blocks < limit * blocks, f"{qtype}: {same_blocks} of {blocks} blocks still on the grid"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert sha256(smollm2_offgrid_dir / name) == sha256(smollm2_dir / name), name


@pytest.mark.slow
def test_offgrid_model_still_writes_sane_text(smollm2_dir: Path, smollm2_offgrid_dir: Path):
    """The noise is one quantization step, not a broken model: `quantcli eval` perplexity on the eval text
    within 1.5x of SmolLM2's own."""

    def ppl(model: Path) -> float:
        out = subprocess.run(
            [sys.executable, "-m", "quantcli", "eval", str(model), "--ctx", "512", "--chunks", "4", "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["ppl"])

    base, moved = ppl(smollm2_dir), ppl(smollm2_offgrid_dir)
    assert base < moved < 1.5 * base, (base, moved)
