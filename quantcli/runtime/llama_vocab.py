"""llama.cpp's own tokenization (src/llama-vocab.cpp), driven by GGUF tokenizer metadata alone.

Two steps, as `llama_vocab::impl::tokenize` does them:

1. `partition`: the text is cut at every occurrence of a special token, longest token first
   (`tokenizer_st_partition`). With parse_special false (what llama-perplexity, llama-imatrix and
   llama-simple's prompt use) only USER_DEFINED tokens cut; CONTROL and UNKNOWN ones stay text.
2. Each remaining text fragment goes to the vocabulary's tokenizer: for SentencePiece ("llama") the
   bigram merge by score with byte fallback (`llm_tokenizer_spm_session`), with a space prepended to a
   fragment that starts the text or follows a special token when add_space_prefix is set; for GPT-2
   BPE the caller's byte-level BPE on the fragment.

Token attributes are the GGUF token types plus the corrections llama.cpp applies by token text when it
loads a vocabulary (end-of-generation and FIM look-alikes become CONTROL, gpt-oss markers
USER_DEFINED, Phi-3's special tokens strip spaces on their right), because they change which tokens cut.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from quantcli.errors import InputInvalid

# GGUF token types (llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 0, 1, 2, 3, 4, 5, 6

# Texts llama.cpp marks CONTROL whatever their type (llama-vocab.cpp: EOG list, EOT/EOM/FIM detection).
_CONTROL_LOOKING = frozenset(
    [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<｜end▁of▁sentence｜>", "[e~[",
    ]
)  # fmt: skip
# FIM look-alikes: marked CONTROL only when the GGUF does not name that FIM token by id.
_FIM_LOOKING: dict[str, tuple[str, ...]] = {
    "tokenizer.ggml.fim_pre_token_id": (
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>",
    ),
    "tokenizer.ggml.fim_suf_token_id": (
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>",
    ),
    "tokenizer.ggml.fim_mid_token_id": (
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>",
    ),
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}  # fmt: skip
_ALWAYS_USER_DEFINED = frozenset(["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"])
_C_ISSPACE = " \t\n\v\f\r"

Fragment = str | int  # raw text, or a token id cut out by `partition`


@dataclass(frozen=True)
class SpecialToken:
    token_id: int
    text: str
    cuts_without_parse_special: bool  # USER_DEFINED (and not also CONTROL/UNKNOWN)
    lstrip: bool
    rstrip: bool


class LlamaVocab:
    """Tokens, scores and attributes as llama.cpp holds them after loading the GGUF's tokenizer keys."""

    def __init__(self, md: dict[str, Any]) -> None:
        tokens = list(md["tokenizer.ggml.tokens"])
        n = len(tokens)
        # llama.cpp names an empty token "[EMPTY_<id>]" so that it can never match text
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        scores = md.get("tokenizer.ggml.scores")
        self.scores = [float(s) for s in scores] if scores is not None else [0.0] * n
        types = md.get("tokenizer.ggml.token_type")
        self.types = [int(t) for t in types] if types is not None else [NORMAL] * n
        if len(self.scores) < n or len(self.types) < n:
            raise InputInvalid("tokenizer.ggml.scores/token_type are shorter than tokenizer.ggml.tokens")
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_to_id) != n:
            raise InputInvalid("tokenizer.ggml.tokens holds the same token text twice")
        self.specials = _special_tokens(md, self.tokens, self.types)

    def partition(self, text: str, parse_special: bool) -> list[Fragment]:
        """tokenizer_st_partition: text pieces and special-token ids, in order."""
        fragments: list[Fragment] = [text] if text else []
        for special in self.specials:
            if not parse_special and not special.cuts_without_parse_special:
                continue
            if special.text not in text:
                continue  # most special tokens never occur; skip the walk over the fragments
            fragments = _cut(fragments, special)
        return fragments


def _special_tokens(md: dict[str, Any], tokens: list[str], types: list[int]) -> list[SpecialToken]:
    control = {i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)}
    user = {i for i, t in enumerate(types) if t == USER_DEFINED}
    for i, text in enumerate(tokens):
        if text in _CONTROL_LOOKING:
            control.add(i)
        if text in _ALWAYS_USER_DEFINED:
            user.add(i)
            control.discard(i)
    for key, texts in _FIM_LOOKING.items():
        if key in md:
            continue
        for i, text in enumerate(tokens):
            if text in texts:
                control.add(i)
                break
    name = str(md.get("general.name", "")).lower()
    phi3 = "phi-3" in name or "phi3" in name
    # the cache is sorted by text length, longest first (std::sort: equal lengths keep no defined order;
    # id order here)
    ids = sorted(control | user, key=lambda i: (-len(tokens[i].encode("utf-8")), i))
    specials = []
    for i in ids:
        text = tokens[i]
        rstrip = phi3 and text not in ("<unk>", "<s>", "<|endoftext|>")
        specials.append(SpecialToken(i, text, i in user and i not in control, False, rstrip))
    return specials


def _cut(fragments: list[Fragment], special: SpecialToken) -> list[Fragment]:
    out: list[Fragment] = []
    for frag in fragments:
        if isinstance(frag, int) or special.text not in frag:
            out.append(frag)
            continue
        start = 0
        while True:
            match = frag.find(special.text, start)
            if match < 0:
                if start < len(frag):
                    out.append(frag[start:])
                break
            left = frag[start:match]
            if special.lstrip:
                left = left.rstrip(_C_ISSPACE)
            if left:
                out.append(left)
            out.append(special.token_id)
            start = match + len(special.text)
            if special.rstrip:
                while start < len(frag) and frag[start] in _C_ISSPACE:
                    start += 1
    return out


# ---- SentencePiece (llm_tokenizer_spm_session) ---------------------------------------------------------
def spm_tokenize(vocab: LlamaVocab, text: str) -> list[int]:
    """The bigram merge of llm_tokenizer_spm_session on one escaped fragment (spaces already '▁')."""
    n = len(text)
    if n == 0:
        return []
    token_to_id, scores = vocab.token_to_id, vocab.scores
    start = list(range(n))  # symbol i covers text[start[i] : start[i] + length[i]]
    length = [1] * n
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap: list[tuple[float, int, int, int]] = []

    def try_add_bigram(left: int, right: int) -> None:
        if left == -1 or right == -1:
            return
        size = length[left] + length[right]
        token = token_to_id.get(text[start[left] : start[left] + size])
        if token is not None:
            # priority_queue top: highest score, then the leftmost pair
            heapq.heappush(heap, (-scores[token], left, right, size))

    for i in range(1, n):
        try_add_bigram(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
            continue  # one side was merged since this pair was queued
        length[left] = size
        length[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        try_add_bigram(prev[left], left)
        try_add_bigram(left, nxt[left])

    out: list[int] = []
    i = 0
    while i != -1:
        piece = text[start[i] : start[i] + length[i]]
        token = token_to_id.get(piece)
        if token is not None:
            out.append(token)
        else:  # a character no piece covers: one byte token per UTF-8 byte
            out.extend(_byte_token(vocab, b) for b in piece.encode("utf-8"))
        i = nxt[i]
    return out


def _byte_token(vocab: LlamaVocab, byte: int) -> int:
    token = vocab.token_to_id.get(f"<0x{byte:02X}>")
    if token is None and byte < 0x80:
        token = vocab.token_to_id.get(chr(byte))
    if token is None:
        raise InputInvalid(f"the vocabulary has no byte token for 0x{byte:02X} (no byte fallback)")
    return token


def encode_spm(vocab: LlamaVocab, fragments: Sequence[Fragment], add_space_prefix: bool) -> list[int]:
    out: list[int] = []
    prev_special = True  # the first fragment is prefixed like one after a special token
    for frag in fragments:
        if isinstance(frag, int):
            out.append(frag)
            prev_special = True
            continue
        text = " " + frag if add_space_prefix and prev_special else frag
        out.extend(spm_tokenize(vocab, text.replace(" ", "\u2581")))
        prev_special = False
    return out


def encode_bpe(fragments: Sequence[Fragment], tokenize_text: Callable[[str], list[int]]) -> list[int]:
    out: list[int] = []
    for frag in fragments:
        if isinstance(frag, int):
            out.append(frag)
        else:
            out.extend(tokenize_text(frag))
    return out
