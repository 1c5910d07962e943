"""SentencePiece vocabularies from tokenizer.model: the converter's `_create_vocab_sentencepiece`."""

from __future__ import annotations

from pathlib import Path

from quantcli.errors import InputInvalid
from quantcli.vocab.bpe import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, _looks_special
from quantcli.vocab.metadata import read_json_object


def vocab_sentencepiece(
    model_dir: Path, vocab_size: int | None, phi3_rules: bool = False
) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types). Added tokens: score -1000, CONTROL if special (or special-looking),
    else USER_DEFINED with U+2581 turned back into spaces; ids missing from the model are `[PAD<i>]`.

    `phi3_rules`: Phi3MiniModel.set_vocab's variant: added tokens from tokenizer_config and then from
    tokenizer.json's added_tokens, CONTROL only when marked special, text kept as is.
    """
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except Exception as exc:
        raise InputInvalid(f"{path}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None

    n_pieces = processor.vocab_size()
    if vocab_size is None:
        vocab_size = n_pieces
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [UNUSED] * vocab_size

    for token_id in range(min(n_pieces, vocab_size)):
        kind = NORMAL
        if processor.IsUnknown(token_id):
            kind = UNKNOWN
        elif processor.IsControl(token_id):
            kind = CONTROL
        elif processor.IsUnused(token_id):
            kind = UNUSED
        elif processor.IsByte(token_id):
            kind = BYTE
        try:
            tokens[token_id] = processor.IdToPiece(token_id)
        except UnicodeDecodeError:  # the protobuf accepts any bytes; the Python binding decodes them
            raise InputInvalid(f"{path}: piece {token_id} is not valid UTF-8") from None
        scores[token_id] = processor.GetScore(token_id)
        types[token_id] = kind

    added_tokens_file = model_dir / "added_tokens.json"
    if added_tokens_file.is_file():
        for key, token_id in read_json_object(added_tokens_file).items():
            _check_id(token_id, added_tokens_file, key)
            if token_id < vocab_size:
                tokens[token_id] = key
                scores[token_id] = -1000.0
                types[token_id] = USER_DEFINED

    if phi3_rules:
        _phi3_added_tokens(model_dir, tokens, scores, types)
        return tokens, [float(s) for s in scores], types

    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        for token_id, data in _added_tokens_decoder(config_file):
            if token_id >= vocab_size:
                continue
            token: str = data["content"]
            if data.get("special") or _looks_special(token):
                types[token_id] = CONTROL
            else:
                token = token.replace("\u2581", " ")
                types[token_id] = USER_DEFINED
            scores[token_id] = -1000.0
            tokens[token_id] = token
    # GetScore returns Python floats already; keep them as float for an FLOAT32 array.
    return tokens, [float(s) for s in scores], types


def _phi3_added_tokens(model_dir: Path, tokens: list[str], scores: list[float], types: list[int]) -> None:
    sources: list[list[dict]] = []
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        sources.append([{**data, "id": token_id} for token_id, data in _added_tokens_decoder(config_file)])
    tokenizer_file = model_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        added = read_json_object(tokenizer_file).get("added_tokens", [])
        if not isinstance(added, list) or not all(isinstance(d, dict) for d in added):
            raise InputInvalid(f"{tokenizer_file}: added_tokens is not a list of objects")
        for data in added:
            _check_id(data.get("id"), tokenizer_file, data.get("content"))
            if not isinstance(data.get("content"), str):
                raise InputInvalid(f"{tokenizer_file}: added token {data.get('id')} has no string content")
        sources.append(added)
    for added_tokens in sources:
        for data in added_tokens:
            token_id = data["id"]
            if token_id >= len(tokens):
                raise InputInvalid(
                    f"{model_dir}: added token id {token_id} is beyond vocab_size {len(tokens)}"
                )
            tokens[token_id] = data["content"]
            scores[token_id] = -1000.0
            types[token_id] = CONTROL if data.get("special") else USER_DEFINED


def _check_id(token_id: object, file: Path, token: object) -> None:
    """A token id from a tokenizer file: a non-negative integer (a list index below)."""
    if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
        raise InputInvalid(f"{file}: id of added token {token!r} is {token_id!r}, expected a non-negative integer")


def _added_tokens_decoder(config_file: Path) -> list[tuple[int, dict]]:
    """tokenizer_config.json's added_tokens_decoder: {"<id>": {"content": str, ...}}, checked."""
    decoder = read_json_object(config_file).get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise InputInvalid(f"{config_file}: added_tokens_decoder is not an object")
    out = []
    for key, data in decoder.items():
        # ASCII digits only, and few: int() would reject "²" and a 5000-digit key (Python's int parsing limit).
        if not (key.isascii() and key.isdigit() and len(key) <= 18) or not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise InputInvalid(
                f"{config_file}: added_tokens_decoder entry {key!r} is not an id with a {{\"content\": str}} object"
            )
        out.append((int(key), data))
    return out
