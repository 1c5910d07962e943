"""Chunked evaluation with llama-perplexity's protocol (docs/verification.md): PPL, KLD against a base, imatrix driver.

Chunk i covers tokens [i*n_ctx, (i+1)*n_ctx) of the whole tokenized text (BOS prepended iff the vocab
adds it); the KV cache is cleared per chunk; with add_bos the chunk's first token is replaced by BOS;
positions n_ctx/2 .. n_ctx-2 score the following token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from quantcli.errors import InputInvalid
from quantcli.runtime.memory import activation_memory
from quantcli.runtime.metrics import (
    KLDAccumulator,
    NllTotals,
    QuantizedLogProbs,
    nll_rows,
    quantize_log_probs,
)
from quantcli.runtime.model import MatmulObserver, Model
from quantcli.runtime.tokenizer import Tokenizer

Progress = Callable[[int, int, dict], None]


@dataclass
class ChunkPlan:
    tokens: np.ndarray  # int64, the whole tokenized text
    n_ctx: int
    n_chunks: int
    add_bos: bool
    bos_id: int | None

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    def chunk_input(self, i: int) -> np.ndarray:
        chunk = self.tokens[i * self.n_ctx : (i + 1) * self.n_ctx].copy()
        if self.add_bos:
            chunk[0] = self.bos_id
        return chunk

    def targets(self, i: int) -> np.ndarray:
        start = i * self.n_ctx
        return self.tokens[start + self.first + 1 : start + self.n_ctx]


def plan_chunks(tokenizer: Tokenizer, text: str, n_ctx: int, chunks: int | None) -> ChunkPlan:
    if n_ctx < 8:
        raise InputInvalid(f"--ctx {n_ctx} is too small")
    tokens = np.asarray(tokenizer.encode(text, add_special=True), dtype=np.int64)
    if tokens.size < 2 * n_ctx:
        raise InputInvalid(
            f"the text tokenizes to only {tokens.size} tokens; at least {2 * n_ctx} are needed for --ctx {n_ctx}"
        )
    n_max = int(tokens.size // n_ctx)
    n_chunks = n_max if chunks is None or chunks < 0 else min(int(chunks), n_max)
    if n_chunks < 1:
        raise InputInvalid("--chunks must be at least 1")
    return ChunkPlan(tokens, n_ctx, n_chunks, tokenizer.add_bos, tokenizer.bos_id)


def chunk_logits(
    model: Model, plan: ChunkPlan, i: int, observer: MatmulObserver | None = None, all_rows: bool = False
) -> np.ndarray:
    """Logits for the scored positions of chunk i (rows first .. n_ctx-2)."""
    cache = model.new_cache(plan.n_ctx)
    rows = np.arange(plan.n_ctx) if all_rows else np.arange(plan.first, plan.n_ctx - 1)
    logits = model.forward(plan.chunk_input(i), cache, output_rows=rows, observer=observer)
    if all_rows:
        logits = logits[plan.first : plan.n_ctx - 1]
    return logits


# Tokens evaluated together by `scored_logits` (8 chunks of 512): each weight is dequantized once per
# group, and the activations of a group stay near 100 MB for a SmolLM2-sized model.
GROUP_TOKENS = 4096


def scored_logits(model: Model, plan: ChunkPlan) -> Iterator[np.ndarray]:
    """`chunk_logits` of every chunk in order, computed a group of chunks at a time layer by layer
    (Model.forward_sequences); a chunk's KV cache is empty at its start either way."""
    per_group = max(1, GROUP_TOKENS // plan.n_ctx)
    rows = np.arange(plan.first, plan.n_ctx - 1)
    with activation_memory():
        for g0 in range(0, plan.n_chunks, per_group):
            ids = range(g0, min(plan.n_chunks, g0 + per_group))
            yield from model.forward_sequences(np.stack([plan.chunk_input(i) for i in ids]), rows)


def perplexity(model: Model, plan: ChunkPlan, progress: Progress | None = None) -> dict:
    totals = NllTotals()
    t0 = time.perf_counter()
    for i, logits in enumerate(scored_logits(model, plan)):
        totals.add(nll_rows(logits, plan.targets(i)))
        if progress:
            progress(i + 1, plan.n_chunks, {"ppl": totals.running_ppl()})
    ppl, unc = totals.summary()
    return {
        "ppl": ppl,
        "ppl_uncertainty": unc,
        "tokens_scored": totals.count,
        "chunks": plan.n_chunks,
        "n_ctx": plan.n_ctx,
        "seconds": time.perf_counter() - t0,
    }


LOGITS_MAGIC = b"_logits_"


def is_llama_kl_base(path) -> bool:
    """A file written by `llama-perplexity --kl-divergence-base` (magic "_logits_")."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == LOGITS_MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


def read_llama_kl_base(
    path, tokenizer: Tokenizer, chunks: int | None
) -> tuple[ChunkPlan, list[QuantizedLogProbs]]:
    """Tokens and uint16-coded base log-probs of a llama-perplexity --kl-divergence-base file."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    header = np.frombuffer(raw[8:20].tobytes(), dtype="<i4")
    n_ctx, n_vocab, n_chunk = (int(v) for v in header)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    rows = n_ctx - 1 - first
    tok_end = 20 + 4 * n_ctx * n_chunk
    expected = tok_end + 2 * rows * nv * n_chunk
    if n_ctx < 8 or n_vocab < 1 or n_chunk < 1 or raw.size < expected:
        raise InputInvalid(f"{path}: truncated or malformed --kl-divergence-base file")
    tokens = np.frombuffer(raw[20:tok_end].tobytes(), dtype="<i4").astype(np.int64)
    n_use = n_chunk if chunks is None or chunks < 0 else min(int(chunks), n_chunk)
    records = np.frombuffer(raw[tok_end : tok_end + 2 * rows * nv * n_use].tobytes(), dtype="<u2")
    records = records.reshape(n_use, rows, nv)
    base = []
    for i in range(n_use):
        head = np.ascontiguousarray(records[i, :, :4]).view("<f4")  # (rows, 2): scale, min_log_prob
        base.append(
            QuantizedLogProbs(head[:, 0].copy(), head[:, 1].copy(), records[i, :, 4 : 4 + n_vocab].copy())
        )
    return ChunkPlan(tokens, n_ctx, n_use, tokenizer.add_bos, tokenizer.bos_id), base


def base_log_probs(
    model: Model, plan: ChunkPlan, progress: Progress | None = None
) -> Iterator[QuantizedLogProbs]:
    for i, logits in enumerate(scored_logits(model, plan)):
        yield quantize_log_probs(logits)
        if progress:
            progress(i + 1, plan.n_chunks, {})


def kl_divergence(
    model: Model, plan: ChunkPlan, base: list[QuantizedLogProbs], progress: Progress | None = None
) -> dict:
    if base and base[0].codes.shape[1] != model.config.n_vocab:
        raise InputInvalid(
            f"the base model has {base[0].codes.shape[1]} vocabulary entries, this model {model.config.n_vocab}"
        )
    acc = KLDAccumulator()
    t0 = time.perf_counter()
    for i, logits in enumerate(scored_logits(model, plan)):
        acc.add(logits, base[i], plan.targets(i))
        if progress:
            progress(i + 1, plan.n_chunks, {"kld": acc.sum_kld / acc.count})
    out = acc.summary()
    out.update({"chunks": plan.n_chunks, "n_ctx": plan.n_ctx, "seconds": time.perf_counter() - t0})
    return out
