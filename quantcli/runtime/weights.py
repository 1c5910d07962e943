"""Tensor sources for the runtime, addressed by GGUF tensor names and GGUF metadata keys.

A source yields float32 arrays in NumPy orientation (the reverse of GGUF `ne`: a weight is (out, in)),
one tensor at a time. `GGUFSource` dequantizes the stored bytes through `quantcli.quants.dequantize`;
`HFSource` (quantcli/runtime/hf.py) maps an HF checkpoint to the same names in memory. `load_rows` serves
the embedding lookup without dequantizing the whole token table.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from quantcli.errors import InputMissing, Unsupported
from quantcli.gguf_constants import GGMLQuantizationType


class TensorSource(Protocol):
    """What the runtime needs from a model file: GGUF-style metadata and tensors by GGUF name."""

    metadata: dict[str, Any]
    description: str

    def names(self) -> Iterable[str]: ...

    def load(self, name: str) -> np.ndarray: ...

    def load_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """float32 rows `rows` (indices along the first NumPy axis: matrix rows of a 2-D tensor, experts of
        a stacked 3-D one)."""
        ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def tensor_type(self, name: str) -> GGMLQuantizationType: ...


class GGUFSource:
    """A GGUF file of any tensor type we (or llama.cpp) write, memory-mapped; dequantized per tensor.

    Read with quantcli.loaders.gguf (gguf.GGUFReader builds one NumPy object per vocabulary string and
    takes seconds on a 49k vocab; this reader validates offsets and keeps arrays as arrays)."""

    def __init__(self, path: Path | str) -> None:
        from quantcli.loaders.gguf import read_gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise InputMissing(f"{self.path} does not exist")
        self.file = read_gguf(self.path)
        self.metadata: dict[str, Any] = {
            key: (kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value)
            for key, kv in self.file.kv.items()
        }
        self.description = f"GGUF {self.path.name}"

    def names(self) -> Iterable[str]:
        return self.file.tensors.keys()

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType(int(self.file.tensors[name].type))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self.file.tensors[name].numpy_shape)

    def load(self, name: str) -> np.ndarray:
        raw = self.file.tensor_bytes(name)
        out = dequantize_bytes(raw, self.tensor_type(name), self.shape(name), name)
        if np.shares_memory(out, raw):
            out = out.copy()  # F32 tensors come back as views of the mapping
        self.file.release(name)  # the float32 copy is what the model keeps; drop the mapped pages
        return out

    def load_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        # ggml rows are independent byte ranges (no block crosses a row): dequantize only those asked for.
        shape = self.shape(name)
        raw = self.file.tensor_bytes(name).reshape(shape[0], -1)
        out = dequantize_bytes(raw[np.asarray(rows)], self.tensor_type(name), (len(rows), *shape[1:]), name)
        self.file.release(name)
        return out


def dequantize_bytes(
    raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """Our dequantizer; for a type quantcli cannot write, gguf-py's NumPy reference (same formulas)."""
    from quantcli import quants

    try:
        quants.get(qtype)
    except Unsupported:
        from gguf import quants as gguf_quants

        try:
            return np.asarray(gguf_quants.dequantize(raw, qtype), dtype=np.float32).reshape(shape)
        except NotImplementedError:
            raise Unsupported(f"{name}: tensor type {qtype.name} cannot be dequantized") from None
    return quants.dequantize(raw, qtype, shape)
