"""A small SentencePiece BPE vocabulary trained here, with the piece kinds a real one (Gemma 3) has.

`add_spm_tokenizer(directory)` writes tokenizer.model and tokenizer_config.json into an HF checkpoint
directory. The vocabulary has byte fallback (newlines, emoji and most CJK only exist as <0xXX> pieces),
control pieces (`<ctrl>`, `<start_of_turn>`, `<|im_end|>`), and USER_DEFINED ones listed as non-special
added tokens the way Gemma 3 lists its whitespace runs: runs of 2, 4, 8 and 23 spaces, two tabs, three
newlines, `<tag>` and `</code>`. MIXED_TEXT holds indented code, tabs, runs of spaces, newlines, digits,
emoji, CJK and every one of those pieces' texts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from quantcli.runtime.textdata import DEFAULT_TEXT

SAMPLE = (
    "def fibonacci(n):\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "        a, b = b, a + b\n"
    "    return a\n\n"
    "\tif x == 10:\n\t\treturn {'key': [1, 2, 3]}  # comment\n"
    "                       Version 3, 29 June 2007\n"
    "Numbers: 12345 and 7 or 3.14159;   spaces\tand tabs   \n"
    "<tag>marked</tag> <ctrl> stays text, <start_of_turn>user<|im_end|> too</code>\n"
    "Ünïcödé café — naïve 日本語のテキスト 🙂🚀 emoji 中文字符 한국어\r\n"
    "the end 2024-11-23.  \n\n\n"
)

VOCAB_SIZE = 704  # 700 SentencePiece pieces + 4 added tokens
# id -> (content, special) as tokenizer_config.json's added_tokens_decoder lists them
ADDED_TOKENS = {
    4: ("<ctrl>", True),
    5: ("<start_of_turn>", True),
    6: ("▁▁", False),  # the converter turns U+2581 back into spaces
    7: ("    ", False),
    8: ("▁▁▁▁▁▁▁▁", False),
    9: ("\t\t", False),
    10: ("<tag>", False),
    700: (" " * 23, False),
    701: ("\n\n\n", False),
    702: ("<|im_end|>", True),
    703: ("</code>", False),
}
TWENTY_THREE_SPACES = 700


def mixed_text() -> str:
    """The shipped eval text's first 6 KB around three copies of SAMPLE: enough for 2 x 128-token chunks."""
    prose = DEFAULT_TEXT.read_text(encoding="utf-8")[:6000]
    return SAMPLE + prose[:3000] + SAMPLE + prose[3000:] + SAMPLE


def train_model() -> bytes:
    import sentencepiece as spm

    prose = DEFAULT_TEXT.read_text(encoding="utf-8")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((prose + "\n" + SAMPLE * 5).splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=700,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        character_coverage=0.999,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["▁▁", "▁▁▁▁", "▁▁▁▁▁▁▁▁", "\t\t", "<tag>"],
        control_symbols=["<ctrl>", "<start_of_turn>"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def add_spm_tokenizer(directory: Path) -> None:
    (directory / "tokenizer.model").write_bytes(train_model())
    decoder = {
        str(i): {"content": text, "special": special, "lstrip": False, "rstrip": False, "normalized": False,
                 "single_word": False}
        for i, (text, special) in ADDED_TOKENS.items()
    }  # fmt: skip
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "added_tokens_decoder": decoder,
        "tokenizer_class": "LlamaTokenizer",
        "model_max_length": 512,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
