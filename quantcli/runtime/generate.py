"""Greedy generation with a KV cache (prompt processed as one batch, then one token per step)."""

from __future__ import annotations

from typing import TextIO

import numpy as np

from quantcli.errors import InputInvalid
from quantcli.runtime.model import Model
from quantcli.runtime.tokenizer import Tokenizer


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
        shown = ""
        for _ in range(n_predict):
            nxt = int(np.argmax(logits[-1]))
            generated.append(nxt)
            if stream is not None:
                text = tokenizer.decode(generated)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    stream.write(text[len(shown) :])
                    stream.flush()
                    shown = text
            if nxt == tokenizer.eos_id or len(generated) == n_predict:
                break
            logits = model.forward(np.asarray([nxt]), cache)
    return {
        "prompt_tokens": [int(t) for t in prompt_ids],
        "tokens": generated,
        "text": tokenizer.decode(generated),
    }
