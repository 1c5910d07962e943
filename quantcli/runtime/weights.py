"""Tensor sources for the runtime, addressed by GGUF tensor names and GGUF metadata keys.

A source yields float32 arrays in NumPy orientation (the reverse of GGUF `ne`: a weight is (out, in)),
one tensor at a time. `GGUFSource` dequantizes the stored bytes through `quantcli.quants.dequantize`;
`HFSource` (quantcli/runtime/hf.py) maps an HF checkpoint to the same names in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from quantcli.errors import InputInvalid, InputMissing, Unsupported


class TensorSource(Protocol):
    """What the runtime needs from a model file: GGUF-style metadata and tensors by GGUF name."""

    metadata: dict[str, Any]
    description: str

    def names(self) -> Iterable[str]: ...

    def load(self, name: str) -> np.ndarray: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def tensor_type(self, name: str) -> GGMLQuantizationType: ...


def _field_value(field: Any) -> Any:
    kind = field.types[0] if field.types else None
    if kind == GGUFValueType.ARRAY:
        # Token lists are large: decode them once here, as Python lists.
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]].tolist()[0]


class GGUFSource:
    """A GGUF file of any tensor type we (or llama.cpp) write, memory-mapped; dequantized per tensor."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputMissing(f"{self.path} does not exist")
        try:
            self.reader = GGUFReader(str(self.path))
        except Exception as exc:  # gguf raises ValueError/struct.error/... on malformed files
            raise InputInvalid(f"{self.path}: not a readable GGUF file ({exc})") from None
        self.metadata: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("GGUF."):
                continue
            self.metadata[key] = _field_value(field)
        self._tensors = {t.name: t for t in self.reader.tensors}
        self.description = f"GGUF {self.path.name}"

    def names(self) -> Iterable[str]:
        return self._tensors.keys()

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType(int(self._tensors[name].tensor_type))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self._tensors[name].shape.tolist()))

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        shape = self.shape(name)
        qtype = self.tensor_type(name)
        raw = np.ascontiguousarray(tensor.data).reshape(-1).view(np.uint8)
        return dequantize_bytes(raw, qtype, shape, name)


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
