"""The model's own tokenizer, for an HF directory or from a GGUF file's tokenizer metadata.

GGUF (and an HF directory whose vocabulary quantcli.vocab converts, see `load_tokenizer`): llama.cpp's
own algorithm from quantcli.runtime.llama_vocab, so ids equal `llama-tokenize --no-parse-special`'s and
llama-perplexity's: special-token partitioning by token type, then SentencePiece's bigram merge with byte
fallback for `tokenizer.ggml.model = "llama"`, or, for `"gpt2"`, a `tokenizers` byte-level BPE (no added
tokens: the partition handles those) with the pre-tokenizer regex llama.cpp uses for `tokenizer.ggml.pre`
(SUPPORTED_BPE_PRE below). Anything else fails with Unsupported.
HF directory without a convertible vocabulary: `tokenizer.json` through `tokenizers`, or
`tokenizer.model` through sentencepiece.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.runtime.llama_vocab import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    LlamaVocab,
    encode_bpe,
    encode_spm,
)

# llama.cpp's regexes (src/llama-vocab.cpp, llm_tokenizer_bpe) for the pre-tokenizers we rebuild.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's own form of gpt-4o's (o200k) regex: its regex engine has no \p{Lu}/\p{Ll} classes, so an
# "upper" letter is any letter but a-z and a "lower" one any letter but A-Z (not the tokenizer.json regex:
# the two split some non-ASCII words differently, and llama-perplexity's ids are the reference)
_GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre name -> (regex list applied in order, ignore_merges, llama.cpp's add_bos default)
SUPPORTED_BPE_PRE: dict[str, tuple[list[str], bool, bool]] = {
    "gpt-2": ([_GPT2_REGEX], False, False),
    "smollm": ([r"\p{N}", _GPT2_REGEX], False, False),
    "starcoder": ([r"\p{N}", _GPT2_REGEX], False, False),
    "llama-bpe": ([_LLAMA3_REGEX], True, True),
    "llama3": ([_LLAMA3_REGEX], True, True),
    "qwen2": ([_QWEN2_REGEX], False, False),
    "gpt-4o": ([_GPT4O_REGEX], False, False),
}


class Tokenizer:
    """encode(text) -> ids as the runtime feeds them to the model; decode(ids) -> text."""

    kind: str

    def __init__(self, bos_id: int | None, eos_id: int | None, add_bos: bool) -> None:
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class LibraryTokenizer(Tokenizer):
    """An HF directory's tokenizer through `tokenizers` or sentencepiece."""

    def __init__(
        self, backend: Any, kind: str, bos_id: int | None, eos_id: int | None, add_bos: bool
    ) -> None:
        super().__init__(bos_id, eos_id, add_bos)
        self._backend = backend
        self.kind = kind  # "tokenizers" or "sentencepiece"

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        if self.kind == "sentencepiece":
            ids = list(self._backend.encode(text))
        else:
            ids = list(self._backend.encode(text, add_special_tokens=False).ids)
        if add_special and self.add_bos:
            ids.insert(0, int(self.bos_id))  # type: ignore[arg-type]
        return ids

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, or None."""
        if self.kind == "sentencepiece":
            i = int(self._backend.piece_to_id(text))
            return i if self._backend.id_to_piece(i) == text else None
        return self._backend.token_to_id(text)

    def decode(self, ids: Sequence[int]) -> str:
        if self.kind == "sentencepiece":
            return self._backend.decode([int(i) for i in ids])
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)


class LlamaCppTokenizer(Tokenizer):
    """llama_tokenize(text, add_special, parse_special=false) and token_to_piece(special=true)."""

    def __init__(
        self,
        vocab: LlamaVocab,
        kind: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        add_eos: bool,
        add_space_prefix: bool,
        bpe: Any = None,
    ) -> None:
        super().__init__(bos_id, eos_id, add_bos)
        self.vocab = vocab
        self.kind = kind  # "spm" or "bpe"
        self.add_eos = add_eos and eos_id is not None
        self.add_space_prefix = add_space_prefix
        self._bpe = bpe
        self._byte_of_char = {c: b for b, c in enumerate(_gpt2_byte_chars())}

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text` (as the GGUF vocabulary stores it), or None."""
        return self.vocab.token_to_id.get(text)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        fragments = self.vocab.partition(text, parse_special=False)
        if self.kind == "spm":
            ids = encode_spm(self.vocab, fragments, self.add_space_prefix)
        else:
            bpe = self._bpe
            ids = encode_bpe(fragments, lambda frag: bpe.encode(frag, add_special_tokens=False).ids)
        if add_special and self.add_bos:
            ids.insert(0, int(self.bos_id))  # type: ignore[arg-type]
        if add_special and self.add_eos:
            ids.append(int(self.eos_id))  # type: ignore[arg-type]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._piece(int(i)) for i in ids).decode("utf-8", errors="replace")

    def _piece(self, token: int) -> bytes:
        text, kind = self.vocab.tokens[token], self.vocab.types[token]
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            return text.encode("utf-8")
        if kind == NORMAL:
            if self.kind == "spm":
                return text.replace("\u2581", " ").encode("utf-8")
            return b"".join(
                bytes([self._byte_of_char[c]]) if c in self._byte_of_char else c.encode("utf-8") for c in text
            )
        if kind == BYTE:
            return bytes([int(text[3:5], 16)]) if self.kind == "spm" else text.encode("utf-8")
        return b""  # UNUSED / UNDEFINED: llama.cpp renders nothing


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode), indexed by byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# ---- HF directory ------------------------------------------------------------------------------------
def from_hf_dir(directory: Path) -> Tokenizer:
    directory = Path(directory)
    cfg = _read_json(directory / "tokenizer_config.json") or {}
    tok_json = directory / "tokenizer.json"
    if tok_json.is_file():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            backend = HFTokenizer.from_file(str(tok_json))
        except Exception as exc:
            raise InputInvalid(f"{tok_json}: cannot load ({exc})") from None
        bos_id = _token_id(backend, cfg.get("bos_token"))
        eos_id = _token_id(backend, cfg.get("eos_token"))
        add_bos = cfg.get("add_bos_token")
        if not isinstance(add_bos, bool):
            add_bos = _post_processor_adds_bos(tok_json, backend, bos_id)
        if bos_id is None:
            bos_id = _config_id(directory, "bos_token_id")
        if eos_id is None:
            eos_id = _config_id(directory, "eos_token_id")
        return LibraryTokenizer(backend, "tokenizers", bos_id, eos_id, bool(add_bos))
    sp_model = directory / "tokenizer.model"
    if sp_model.is_file():
        import sentencepiece as spm

        backend = spm.SentencePieceProcessor(model_file=str(sp_model))
        add_bos = cfg.get("add_bos_token", True)
        bos = backend.bos_id()
        eos = backend.eos_id()
        return LibraryTokenizer(
            backend, "sentencepiece", bos if bos >= 0 else None, eos if eos >= 0 else None, bool(add_bos)
        )
    raise InputMissing(f"{directory} has neither tokenizer.json nor tokenizer.model")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputInvalid(f"{path}: {exc}") from None


def _token_id(backend: Any, token: Any) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    return backend.token_to_id(token)


def _config_id(directory: Path, key: str) -> int | None:
    cfg = _read_json(directory / "config.json") or {}
    value = cfg.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def _post_processor_adds_bos(tok_json: Path, backend: Any, bos_id: int | None) -> bool:
    # As gguf-py's SpecialVocab: a TemplateProcessing whose single template starts with the BOS token.
    data = _read_json(tok_json) or {}
    post = data.get("post_processor") or {}
    procs = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in procs:
        if proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single") or []
        if single and "SpecialToken" in single[0]:
            first = single[0]["SpecialToken"].get("id")
            return bos_id is not None and backend.token_to_id(first) == bos_id
    return False


# ---- GGUF metadata -----------------------------------------------------------------------------------
def rebuildable_from_metadata(md: dict[str, Any]) -> bool:
    """Whether `from_gguf_metadata` tokenizes this vocabulary (else it raises Unsupported)."""
    if not md.get("tokenizer.ggml.tokens"):
        return False
    model = md.get("tokenizer.ggml.model")
    return model == "llama" or (
        model == "gpt2" and md.get("tokenizer.ggml.pre", "default") in SUPPORTED_BPE_PRE
    )


def from_gguf_metadata(md: dict[str, Any]) -> Tokenizer:
    model = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(model, str) or not tokens:
        raise Unsupported("the GGUF file has no tokenizer (tokenizer.ggml.model / tokens missing)")
    bos_id = md.get("tokenizer.ggml.bos_token_id")
    eos_id = md.get("tokenizer.ggml.eos_token_id")
    if model == "gpt2":
        pre = md.get("tokenizer.ggml.pre", "default")
        if pre not in SUPPORTED_BPE_PRE:
            raise Unsupported(
                f"BPE pre-tokenizer {pre!r} is not supported by the runtime (supported: "
                f"{', '.join(sorted(SUPPORTED_BPE_PRE))})"
            )
        regexes, ignore_merges, add_bos_default = SUPPORTED_BPE_PRE[pre]
        vocab = LlamaVocab(md)
        bpe = _byte_level_bpe(md, vocab.tokens, regexes, ignore_merges)
        return LlamaCppTokenizer(
            vocab,
            "bpe",
            bos_id,
            eos_id,
            bool(md.get("tokenizer.ggml.add_bos_token", add_bos_default)),
            bool(md.get("tokenizer.ggml.add_eos_token", False)),
            False,
            bpe,
        )
    if model == "llama":
        return LlamaCppTokenizer(
            LlamaVocab(md),
            "spm",
            bos_id if bos_id is not None else 1,
            eos_id if eos_id is not None else 2,
            bool(md.get("tokenizer.ggml.add_bos_token", True)),
            bool(md.get("tokenizer.ggml.add_eos_token", False)),
            bool(md.get("tokenizer.ggml.add_space_prefix", True)),
        )
    raise Unsupported(
        f"tokenizer model {model!r} cannot be rebuilt from GGUF metadata (supported: gpt2 with pre "
        f"{', '.join(sorted(SUPPORTED_BPE_PRE))}; llama/SentencePiece); pass the HF directory instead"
    )


def _byte_level_bpe(md: dict[str, Any], tokens: list[str], regexes: list[str], ignore_merges: bool) -> Any:
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    merges = []
    for m in md.get("tokenizer.ggml.merges") or []:
        a, sep, b = m.partition(" ")
        if not sep:
            raise InputInvalid(f"malformed BPE merge {m!r}")
        merges.append((a, b))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    try:
        backend = HFTokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    except Exception as exc:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise InputInvalid(f"cannot rebuild the BPE tokenizer from GGUF metadata ({exc})") from None
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return backend
