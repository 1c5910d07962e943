"""Helpers the quantizer byte-exactness tests share (test_kquants, test_native)."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


def make_imatrix(ncols: int, seed: int, zeros: bool = False) -> np.ndarray:
    """Positive per-column importances spanning ~8 decades (as real imatrices do), optionally with zeros."""
    rng = np.random.default_rng(seed)
    im = np.exp(rng.uniform(-9.0, 9.0, ncols)).astype(np.float32)
    if zeros:
        im[rng.random(ncols) < 0.1] = 0.0
    return im


def assert_same_bytes(ours: np.ndarray, ref: np.ndarray, qtype: GGMLQuantizationType, what: str) -> None:
    """`ours` and `ref` (uint8 rows) are equal; otherwise say where the first difference is (row, block, byte)."""
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    bad = np.argwhere(ours != ref)
    if bad.size:
        block = GGML_QUANT_SIZES[qtype][1]
        r, c = bad[0]
        raise AssertionError(
            f"{qtype.name} {what}: {len(bad)} differing bytes in {len(np.unique(bad[:, 0]))} rows; "
            f"first at row {r}, block {c // block}, byte {c % block}"
        )
