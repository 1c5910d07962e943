"""Streaming safetensors writer: the header is built from shapes and dtypes known up front, then tensors
are written one at a time (the `safetensors` library needs every tensor in memory at once)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# bfloat16 (from `ml_dtypes`) is looked up by its dtype name so that importing this module does not import
# ml_dtypes (0.6 s); an array can only be bfloat16 once something has imported it.
_NAMES = {
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<u4"): "U32",
    np.dtype("u1"): "U8",
    np.dtype("i1"): "I8",
}


# ml_dtypes' names, looked up by name as bfloat16 is
_ML_DTYPE_NAMES = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def dtype_name(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.name in _ML_DTYPE_NAMES:
        return _ML_DTYPE_NAMES[dtype.name]
    return _NAMES[dtype]


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class SafetensorsStreamWriter:
    """Write `planned` tensors, in order, to `fh`: call `write(name, array)` once per tensor in plan order."""

    def __init__(self, fh: BinaryIO, planned: Iterable[PlannedTensor], metadata: dict[str, str] | None = None):
        self.fh = fh
        self.planned = list(planned)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        for t in self.planned:
            header[t.name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        t = self.planned[self._next]
        arr = np.ascontiguousarray(array)
        if name != t.name or arr.dtype != t.dtype or tuple(arr.shape) != t.shape:
            raise AssertionError(f"tensor {name} {arr.dtype}{arr.shape} does not match the plan {t}")
        self.fh.write(arr.tobytes())
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.planned):
            raise AssertionError(f"{len(self.planned) - self._next} planned tensors were not written")


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Small helper for tests and fixtures: write in-memory tensors (sorted by name)."""
    names = sorted(tensors)
    with open(path, "wb") as fh:
        w = SafetensorsStreamWriter(fh, [PlannedTensor(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names], metadata)
        for n in names:
            w.write(n, tensors[n])
        w.close()
