"""GPT-2 style byte-level BPE from tokenizer.json: the converter's `get_vocab_base` and `get_vocab_base_pre`.

The converter loads the tokenizer with transformers' AutoTokenizer; we use the `tokenizers` library on
tokenizer.json, which is what a transformers "fast" tokenizer runs underneath, so the token ids of the probe
text (and hence the pre-tokenizer hash) are the same. Known difference: transformers classes that rebuild the
post-processor from tokenizer_config (add_bos_token/add_eos_token on LlamaTokenizerFast) are not modelled;
such models ship tokenizer.model and take the SentencePiece path anyway.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.vocab.metadata import read_json_object
from quantcli.vocab.pre_hashes import CHKTXT, PRE_TOKENIZER_BY_HASH

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# transformers' clean_up_tokenization (applied by decode() when clean_up_tokenization_spaces is true)
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def load_tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputMissing(f"{path} not found (a BPE vocabulary needs tokenizer.json)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust error text is the useful part
        raise InputInvalid(f"{path}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None


def pre_tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of str(token ids of CHKTXT), default special-token handling (as AutoTokenizer.encode)."""
    ids = tokenizer.encode(CHKTXT).ids
    return sha256(str(ids).encode()).hexdigest()


def pre_tokenizer_name(tokenizer: Any, model_dir: Path) -> str:
    chkhsh = pre_tokenizer_hash(tokenizer)
    name = PRE_TOKENIZER_BY_HASH.get(chkhsh)
    if name is None:
        raise Unsupported(
            f"{model_dir}: BPE pre-tokenizer not recognized (chkhsh {chkhsh}); llama.cpp would not know how to "
            "pre-tokenize it"
        )
    return name


def _tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    return read_json_object(path)


def _looks_special(token: str) -> bool:
    """The converter's does_token_look_special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # deepseek-coder's fullwidth bars
        or (token.startswith("<unused") and token.endswith(">"))
    )


def vocab_base(model_dir: Path, vocab_size: int | None) -> tuple[list[str], list[int], str]:
    """(tokens, token types, pre-tokenizer name) exactly as conversion/base.py's get_vocab_base."""
    tokenizer = load_tokenizer(model_dir)
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
    if vocab_size is None:
        vocab_size = len(vocab)
    if vocab and max(vocab.values()) >= vocab_size:
        raise InputInvalid(f"{model_dir}: tokenizer has ids >= vocab_size {vocab_size} from config.json")

    pre = pre_tokenizer_name(tokenizer, model_dir)

    reverse_vocab = {index: token for token, index in vocab.items()}
    added_decoder = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
    added_contents = {added.content for added in added_decoder.values()}
    cleanup = bool(_tokenizer_config(model_dir).get("clean_up_tokenization_spaces", False))

    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in reverse_vocab:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
            continue
        token = reverse_vocab[index]
        if token in added_contents and index in added_decoder:
            added = added_decoder[index]
            if not added.normalized:
                # llama.cpp expects CONTROL/USER_DEFINED tokens pre-normalized: round-trip through the tokenizer.
                token = tokenizer.decode(
                    tokenizer.encode(token, add_special_tokens=False).ids, skip_special_tokens=False
                )
                if cleanup:
                    for before, after in _CLEANUP:
                        token = token.replace(before, after)
            if added.special or _looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types, pre
