"""The runtime's tokenizer against llama-tokenize (--no-parse-special, as llama-perplexity tokenizes), whole
texts with indented code, tabs, runs of spaces, newlines, digits, emoji, CJK and special-token texts.

* byte-level BPE: a synthetic vocabulary (a few merges, CONTROL and USER_DEFINED tokens) under every
  pre-tokenizer the runtime accepts (SUPPORTED_BPE_PRE): digit grouping, contractions, newlines and
  runs of spaces differ between them;
* SentencePiece: the vocabulary trained in tests/spm_fixture.py (whitespace-run, user-defined,
  byte-fallback and control pieces), converted by quantcli convert and by llama.cpp's converter;
* a hand-made SentencePiece vocabulary for the space prefix and byte fallback on their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFWriter
from spm_fixture import SAMPLE, TWENTY_THREE_SPACES, add_spm_tokenizer, mixed_text
from tiny_models import make_tiny_llama
from vocab_helpers import gpt2_byte_alphabet

from quantcli.runtime.tokenizer import SUPPORTED_BPE_PRE, from_gguf_metadata

pytestmark = pytest.mark.slow

TEXT = (
    "Hello world! I'M here, you're there.\n\n  Numbers: 12345 and 7 or 3.14159;   spaces\tand tabs\n"
    "Ünïcödé café — naïve 日本語 テスト 🙂\r\nthe theater they'll   THE end 2024-11-23.\n"
    "<|endoftext|> and <|begin|> are text here\n"
    # camel case in and out of ASCII: gpt-4o's split at a case change, which llama.cpp's regex engine
    # sees only for A-Z / a-z (МоскваРоссия stays one word there, two under tokenizer.json's regex)
    "XMLHttpRequest camelCase ÉcoleNormale МоскваРоссия DÉJÀvu naïveTé\n" + SAMPLE
)


BPE_MERGES = [
    "Ġ t",
    "h e",
    "Ġt he",
    "Ġthe r",
    "1 2",
    "12 3",
    "Ġ w",
    "o r",
    "Ġw or",
    "l d",
    "Ġwor ld",
    "e r",
    "Ġ a",
    "n d",
    "Ġa nd",
    "' s",
    "' m",
    "r e",
    "' re",
    "l l",
    "' ll",
    "Ġ Ġ",
    "ĠĠ Ġ",
    "Ċ Ċ",
    "H e",
    "He l",
    "Hel l",
    "Hell o",
    "Ġthe a",
    "Ġthea t",
    "Ġtheat er",
    # the bytes D0 B0 | D0 A0 of "аР" in МоскваРоссия: merges only where a pre-tokenizer keeps the word whole
    "° Ð",
]


def _bpe_tokens() -> list[str]:
    # CONTROL texts stay text without parse_special; USER_DEFINED ones cut the text (raw, not byte-level)
    tokens = ["<|endoftext|>", "<|begin|>", "<tag>", "    "] + gpt2_byte_alphabet()
    for m in BPE_MERGES:
        a, b = m.split(" ")
        if a + b not in tokens:
            tokens.append(a + b)
    # whole words with no merge path: only reachable through llama-bpe's ignore_merges
    tokens += ["Ġend", "ĠTHE"]
    assert len(set(tokens)) == len(tokens)
    return tokens


def _vocab_only_gguf(path: Path, md: dict) -> None:
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model(md["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in md:
        w.add_tokenizer_pre(md["tokenizer.ggml.pre"])
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_types(md["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.scores" in md:
        w.add_token_scores(md["tokenizer.ggml.scores"])
    if "tokenizer.ggml.merges" in md:
        w.add_token_merges(md["tokenizer.ggml.merges"])
    w.add_bos_token_id(md["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(md["tokenizer.ggml.eos_token_id"])
    if "tokenizer.ggml.add_bos_token" in md:
        w.add_add_bos_token(md["tokenizer.ggml.add_bos_token"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama_ids(model: Path, text_file: Path) -> list[int]:
    from reference import llama_tokenize_ids_no_special

    return llama_tokenize_ids_no_special(model, text_file)


@pytest.mark.parametrize("pre", sorted(SUPPORTED_BPE_PRE))
def test_bpe_rebuild_matches_llama_tokenize(pre: str, tmp_path: Path) -> None:
    tokens = _bpe_tokens()
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3, 4, 4] + [1] * (len(tokens) - 4),
        "tokenizer.ggml.merges": BPE_MERGES,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 0,
        "tokenizer.ggml.add_bos_token": pre == "llama-bpe",
    }
    model, text = tmp_path / "vocab.gguf", tmp_path / "text.txt"
    _vocab_only_gguf(model, md)
    text.write_text(TEXT, encoding="utf-8")
    ref = _llama_ids(model, text)
    ours = from_gguf_metadata(md).encode(TEXT)
    assert ours == ref, pre
    assert len(ref) < len(TEXT.encode("utf-8"))  # the merges were used
    assert 2 in ref and 3 in ref and 0 not in ref  # user-defined tokens cut, control text stays text


def test_spm_rebuild_matches_llama_tokenize(tmp_path: Path) -> None:
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = [
        "▁",
        "e",
        "h",
        "l",
        "o",
        "r",
        "w",
        "d",
        "t",
        "a",
        "n",
        "s",
        "he",
        "ll",
        "llo",
        "▁he",
        "▁hello",
        "▁w",
        "or",
        "▁wor",
        "ld",
        "▁world",
        "▁t",
        "▁the",
        "er",
        "▁a",
        "nd",
        "▁and",
        "1",
        "2",
        "3",
        "12",
    ]
    scores = [0.0] * len(pieces) + [-float(i) for i in range(len(words))]
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces + words,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types + [1] * len(words),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    model, text = tmp_path / "spm.gguf", tmp_path / "text.txt"
    _vocab_only_gguf(model, md)
    sample = "hello world and the  hello\nworld 123 café 🙂"
    text.write_text(sample, encoding="utf-8")
    ref = _llama_ids(model, text)
    assert from_gguf_metadata(md).encode(sample) == ref


@pytest.fixture(scope="module")
def spm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spm_fixture import VOCAB_SIZE

    directory = make_tiny_llama(
        tmp_path_factory.mktemp("spm") / "hf", hidden=64, layers=1, heads=2, kv_heads=1, ff=128, vocab=VOCAB_SIZE
    )
    add_spm_tokenizer(directory)
    return directory


@pytest.mark.parametrize("converter", ["quantcli", "llama.cpp"])
def test_trained_sentencepiece_vocab_matches_llama_tokenize(
    converter: str, spm_checkpoint: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from reference import convert_with_llamacpp

    from quantcli.runtime import load_tokenizer

    gguf = tmp_path / "model.gguf"
    if converter == "quantcli":
        cmd = [sys.executable, "-m", "quantcli", "convert", str(spm_checkpoint), "-t", "f16", "-o", str(gguf)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        proc = convert_with_llamacpp(spm_checkpoint, gguf, "f16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = mixed_text()
    text_file = tmp_path / "text.txt"
    text_file.write_bytes(text.encode("utf-8"))
    ref = _llama_ids(gguf, text_file)
    tokenizer = load_tokenizer(gguf)
    assert tokenizer.encode(text) == ref
    assert load_tokenizer(spm_checkpoint).encode(text) == ref
    types = tokenizer.vocab.types
    assert TWENTY_THREE_SPACES in ref  # the USER_DEFINED run of 23 spaces, as Gemma 3's
    assert any(types[i] == 6 for i in ref)  # byte fallback (newlines, emoji, CJK)
    assert not any(types[i] == 3 for i in ref[1:])  # control texts (<ctrl>, <|im_end|>) stay text


def test_sentencepiece_tokenizes_100_kb_in_seconds(spm_checkpoint: Path) -> None:
    import time

    from quantcli.runtime import load_tokenizer

    tokenizer = load_tokenizer(spm_checkpoint)
    text = mixed_text()
    text = text * (100_000 // len(text) + 1)
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    assert time.perf_counter() - start < 10.0
    assert len(ids) > 20_000


# Real vocabularies: the vocab-only GGUFs llama.cpp ships for its own tokenizer tests (LLaMA's and Phi-3's
# SentencePiece, GPT-2, Llama 3, Qwen2 and StarCoder BPE), on the mixed text and on llama.cpp's test inputs.
@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "gpt-2", "llama-bpe", "qwen2", "starcoder"])
def test_llamacpp_vocab_files_match_llama_tokenize(name: str, tmp_path: Path) -> None:
    from reference import llamacpp_src

    from quantcli.runtime import load_tokenizer

    model = llamacpp_src() / "models" / f"ggml-vocab-{name}.gguf"
    tokenizer = load_tokenizer(model)
    mixed = tmp_path / "mixed.txt"
    specials = "\nend </s>  after <s> and <|end|>  <|user|>\n<|endoftext|> <unk>\n"  # stay text
    mixed.write_bytes((mixed_text() + specials).encode("utf-8"))
    for text_file in (mixed, model.with_name(model.name + ".inp")):
        ref = _llama_ids(model, text_file)
        assert tokenizer.encode(text_file.read_bytes().decode("utf-8")) == ref, (name, text_file.name)
