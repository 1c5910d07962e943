"""Dense LSB-first bit packing shared by the packed-safetensors formats.

Element i of a row occupies bits [i*b, i*b + b) of the row's bit stream; 32-bit words hold the stream
little-end first, and an element may straddle two words (only for b in {3, 5, 6, 7}). For b in {1, 2, 4, 8}
this equals "32 // b values per word, element 0 in the lowest bits".
"""

from __future__ import annotations

import numpy as np


def packed_words(n: int, bits: int) -> int:
    return -(-n * bits // 32)


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers (..., n) < 2**bits -> uint32 (..., ceil(n*bits/32)), packed along the last axis."""
    values = np.asarray(values)
    *lead, n = values.shape
    flat = values.reshape(-1, n).astype(np.uint64)
    nwords = packed_words(n, bits)
    # Pad each row to a whole number of 32-element groups: 32 elements of b bits are exactly b words.
    groups = -(-n // 32)
    padded = np.zeros((flat.shape[0], groups * 32), dtype=np.uint64)
    padded[:, :n] = flat
    g = padded.reshape(flat.shape[0], groups, 32)
    shifts = np.arange(32, dtype=np.uint64) * np.uint64(bits)
    # Each group is a b*32-bit little-endian integer; build it as b 32-bit words.
    words = np.zeros((flat.shape[0], groups, bits), dtype=np.uint64)
    word_of = (shifts // 32).astype(np.intp)
    offset = shifts % 32
    for i in range(32):
        contrib = g[:, :, i] << offset[i]
        words[:, :, word_of[i]] |= contrib & np.uint64(0xFFFFFFFF)
        if offset[i] + bits > 32:
            words[:, :, word_of[i] + 1] |= contrib >> np.uint64(32)
    out = words.reshape(flat.shape[0], groups * bits)[:, :nwords].astype(np.uint32)
    return out.reshape(*lead, nwords)


def unpack_rows(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_rows: uint32/int32 (..., nwords) -> uint8 (..., n)."""
    words = np.asarray(words)
    *lead, nwords = words.shape
    w = np.ascontiguousarray(words).view(np.uint32).reshape(-1, nwords).astype(np.uint64)
    groups = -(-n // 32)
    full = np.zeros((w.shape[0], groups * bits), dtype=np.uint64)
    full[:, :nwords] = w
    full = full.reshape(w.shape[0], groups, bits)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((w.shape[0], groups, 32), dtype=np.uint8)
    for i in range(32):
        start = i * bits
        lo, off = divmod(start, 32)
        v = full[:, :, lo] >> np.uint64(off)
        if off + bits > 32:
            v |= full[:, :, lo + 1] << np.uint64(32 - off)
        out[:, :, i] = (v & mask).astype(np.uint8)
    return out.reshape(w.shape[0], groups * 32)[:, :n].reshape(*lead, n)
