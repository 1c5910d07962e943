"""Optional C extension. Until it is built every call returns None and NumPy does the work."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType


def available() -> bool:
    return False


def quantize_rows(
    qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None, threads: int | None
) -> np.ndarray | None:
    return None
