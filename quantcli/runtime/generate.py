"""Greedy generation with a KV cache (prompt processed as one batch, then one token per step)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TextIO

import numpy as np
from threadpoolctl import threadpool_limits

from quantcli.errors import InputInvalid
from quantcli.runtime.model import KVCache, Model
from quantcli.runtime.tokenizer import Tokenizer

# Token texts llama.cpp's llama_vocab treats as end of generation whatever their id (llama-vocab.cpp,
# special_eog_ids), besides the eos/eot/eom ids named in the metadata.
EOG_TOKEN_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
)


def end_of_generation_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids that stop generation, as llama_vocab_is_eog: EOS plus every token whose text is one of
    EOG_TOKEN_TEXTS (<|im_end|>, <end_of_turn>, ...). llama.cpp drops "<|end|>" when the vocabulary also
    has "<|return|>"/"<|call|>" (gpt-oss) or "<|calls|>"/"<|flush|>" (solar-open); so do we."""
    ids = {int(tokenizer.eos_id)} if tokenizer.eos_id is not None else set()
    found = {text: i for text in EOG_TOKEN_TEXTS if (i := tokenizer.token_id(text)) is not None}
    if ("<|return|>" in found and "<|call|>" in found) or ("<|calls|>" in found and "<|flush|>" in found):
        found.pop("<|end|>", None)
    return frozenset(ids | set(found.values()))


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """One-row matmuls (decoding) are memory-bound; BLAS threads only add synchronisation cost (20x
    slower on a loaded 2-core machine)."""
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
    stop: int | None = None
    prompt_seconds = decode_seconds = 0.0
    if stream is not None:
        stream.write(prompt)
        stream.flush()
    if n_predict > 0:
        t0 = time.perf_counter()
        logits = model.forward(np.asarray(prompt_ids), cache)
        prompt_seconds = time.perf_counter() - t0
        with single_thread_blas():
            generated, stop = _decode_loop(
                model, tokenizer, cache, logits, n_predict, stream, end_of_generation_ids(tokenizer)
            )
        decode_seconds = time.perf_counter() - t0 - prompt_seconds
    return {
        "prompt_tokens": [int(t) for t in prompt_ids],
        "tokens": generated,  # without the end-of-generation token
        "text": tokenizer.decode(generated),
        "stop": None if stop is None else tokenizer.decode([stop]),
        "stop_token": stop,
        "prompt_seconds": round(prompt_seconds, 4),
        "decode_seconds": round(decode_seconds, 4),
        # Every token sampled (the EOG one included) costs one step after the prompt.
        "tokens_per_second": (len(generated) + (stop is not None)) / decode_seconds if decode_seconds else 0.0,
    }


def _decode_loop(
    model: Model,
    tokenizer: Tokenizer,
    cache: KVCache,
    logits: np.ndarray,
    n_predict: int,
    stream: TextIO | None,
    eog: frozenset[int],
) -> tuple[list[int], int | None]:
    """Greedy tokens until an end-of-generation token (returned apart, never printed) or n_predict."""
    generated: list[int] = []
    shown = ""
    for _ in range(n_predict):
        nxt = int(np.argmax(logits[-1]))
        if nxt in eog:
            return generated, nxt
        generated.append(nxt)
        if stream is not None and nxt != tokenizer.eos_id:
            text = tokenizer.decode(generated)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stream.write(text[len(shown) :])
                stream.flush()
                shown = text
        if len(generated) == n_predict:
            break
        logits = model.forward(np.asarray([nxt]), cache)
    return generated, None
