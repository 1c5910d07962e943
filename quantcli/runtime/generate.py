"""Greedy generation with a KV cache (prompt processed as one batch, then one token per step)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TextIO

import numpy as np

from quantcli.errors import InputInvalid
from quantcli.runtime.model import KVCache, Model
from quantcli.runtime.tokenizer import Tokenizer


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """One-row matmuls (decoding) are memory-bound; BLAS threads only add synchronisation cost (20x
    slower on a loaded 2-core machine). threadpoolctl is optional: without it nothing changes."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def greedy(
    model: Model,
    tokenizer: Tokenizer,
    prompt: str,
    n_predict: int,
    n_ctx: int | None = None,
    stream: TextIO | None = None,
) -> dict:
    prompt_ids = tokenizer.encode(prompt, add_special=True)
    if not prompt_ids:
        raise InputInvalid("the prompt tokenizes to nothing")
    n_ctx = n_ctx or len(prompt_ids) + n_predict
    if len(prompt_ids) + n_predict > n_ctx:
        raise InputInvalid(f"prompt ({len(prompt_ids)} tokens) + -n {n_predict} exceeds --ctx {n_ctx}")
    cache = model.new_cache(n_ctx)
    generated: list[int] = []
    if stream is not None:
        stream.write(prompt)
        stream.flush()
    if n_predict > 0:
        logits = model.forward(np.asarray(prompt_ids), cache)
        with single_thread_blas():
            generated = _decode_loop(model, tokenizer, cache, logits, n_predict, stream)
    # like llama-simple, an end-of-generation token ends the text without being printed
    shown = generated[:-1] if generated and generated[-1] == tokenizer.eos_id else generated
    return {
        "prompt_tokens": [int(t) for t in prompt_ids],
        "tokens": generated,
        "text": tokenizer.decode(shown),
    }


def _decode_loop(
    model: Model,
    tokenizer: Tokenizer,
    cache: KVCache,
    logits: np.ndarray,
    n_predict: int,
    stream: TextIO | None,
) -> list[int]:
    generated: list[int] = []
    shown = ""
    for _ in range(n_predict):
        nxt = int(np.argmax(logits[-1]))
        generated.append(nxt)
        if stream is not None and nxt != tokenizer.eos_id:
            text = tokenizer.decode(generated)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stream.write(text[len(shown) :])
                stream.flush()
                shown = text
        if nxt == tokenizer.eos_id or len(generated) == n_predict:
            break
        logits = model.forward(np.asarray([nxt]), cache)
    return generated
