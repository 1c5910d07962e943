"""The model's own tokenizer, for an HF directory or rebuilt from a GGUF file's tokenizer metadata.

HF directory: `tokenizer.json` through `tokenizers` (or `tokenizer.model` through sentencepiece).
GGUF: `tokenizer.ggml.model = "gpt2"` becomes a `tokenizers` byte-level BPE with the pre-tokenizer regex
llama.cpp uses for `tokenizer.ggml.pre` (SUPPORTED_BPE_PRE below); `"llama"` (SentencePiece) becomes a
sentencepiece BPE model rebuilt from tokens/scores/token types. Anything else fails with Unsupported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid, InputMissing, Unsupported

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
# pre name -> (regex list applied in order, ignore_merges)
SUPPORTED_BPE_PRE: dict[str, tuple[list[str], bool]] = {
    "gpt-2": ([_GPT2_REGEX], False),
    "smollm": ([r"\p{N}", _GPT2_REGEX], False),
    "starcoder": ([r"\p{N}", _GPT2_REGEX], False),
    "llama-bpe": ([_LLAMA3_REGEX], True),
    "llama3": ([_LLAMA3_REGEX], True),
    "qwen2": ([_QWEN2_REGEX], False),
}

_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    def __init__(
        self, backend: Any, kind: str, bos_id: int | None, eos_id: int | None, add_bos: bool
    ) -> None:
        self._backend = backend
        self.kind = kind  # "tokenizers" or "sentencepiece"
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos and bos_id is not None

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
        return Tokenizer(backend, "tokenizers", bos_id, eos_id, bool(add_bos))
    sp_model = directory / "tokenizer.model"
    if sp_model.is_file():
        import sentencepiece as spm

        backend = spm.SentencePieceProcessor(model_file=str(sp_model))
        add_bos = cfg.get("add_bos_token", True)
        bos = backend.bos_id()
        eos = backend.eos_id()
        return Tokenizer(
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
def from_gguf_metadata(md: dict[str, Any]) -> Tokenizer:
    model = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(model, str) or not tokens:
        raise Unsupported("the GGUF file has no tokenizer (tokenizer.ggml.model / tokens missing)")
    bos_id = md.get("tokenizer.ggml.bos_token_id")
    eos_id = md.get("tokenizer.ggml.eos_token_id")
    pre = md.get("tokenizer.ggml.pre", "default")
    if model == "gpt2":
        backend = _rebuild_bpe(md, tokens, pre)
        add_bos = md.get("tokenizer.ggml.add_bos_token", pre in ("llama-bpe", "llama3"))
        return Tokenizer(backend, "tokenizers", bos_id, eos_id, bool(add_bos))
    if model == "llama":
        backend = _rebuild_spm(md, tokens)
        add_bos = md.get("tokenizer.ggml.add_bos_token", True)
        return Tokenizer(
            backend,
            "sentencepiece",
            bos_id if bos_id is not None else 1,
            eos_id if eos_id is not None else 2,
            bool(add_bos),
        )
    raise Unsupported(
        f"tokenizer model {model!r} cannot be rebuilt from GGUF metadata (supported: gpt2 with pre "
        f"{', '.join(sorted(SUPPORTED_BPE_PRE))}; llama/SentencePiece); pass the HF directory instead"
    )


def _rebuild_bpe(md: dict[str, Any], tokens: list[str], pre: str) -> Any:
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if pre not in SUPPORTED_BPE_PRE:
        raise Unsupported(
            f"BPE pre-tokenizer {pre!r} is not supported by the runtime (supported: "
            f"{', '.join(sorted(SUPPORTED_BPE_PRE))})"
        )
    regexes, ignore_merges = SUPPORTED_BPE_PRE[pre]
    merges_raw = md.get("tokenizer.ggml.merges") or []
    merges = []
    for m in merges_raw:
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
    backend.decoder = decoders.ByteLevel()
    types = md.get("tokenizer.ggml.token_type") or []
    special = [
        AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == _CONTROL
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types)
        if t == _USER_DEFINED
    ]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)
    return backend


def _rebuild_spm(md: dict[str, Any], tokens: list[str]) -> Any:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    proto = pb.ModelProto()
    for tok, score, kind in zip(tokens, scores, types, strict=False):
        piece = proto.pieces.add()
        piece.piece = tok
        piece.score = float(score)
        piece.type = int(kind) if 1 <= int(kind) <= 6 else 1
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(t) == 6 for t in types)
    unk = md.get("tokenizer.ggml.unknown_token_id", 0)
    spec.unk_id = int(unk)
    spec.bos_id = int(md.get("tokenizer.ggml.bos_token_id", 1))
    spec.eos_id = int(md.get("tokenizer.ggml.eos_token_id", 2))
    spec.pad_id = -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    try:
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as exc:
        raise InputInvalid(f"cannot rebuild the SentencePiece model from GGUF metadata ({exc})") from None
