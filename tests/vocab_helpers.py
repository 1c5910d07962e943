"""Vocabulary pieces the tokenizer tests build GGUF vocabularies from."""

from __future__ import annotations


def gpt2_byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the byte-level BPE alphabet, one printable character per byte 0..255."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]
