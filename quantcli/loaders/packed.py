"""Read packed safetensors (compressed-tensors, MLX, GPTQ v1) and FP8 checkpoints back as an ordinary
checkpoint.

Each quantized Linear's stored tensors are replaced by `<module>.weight`, dequantized on read exactly as
the format's client does (values in the model dtype). Everything downstream (conversion to GGUF, the
runtime) then sees a plain HF checkpoint, as llama.cpp's converter does for these formats.

`open_checkpoint` is the one entry point for HF-style sources: it opens the plain checkpoint
(`loaders.hf`) and wraps it here when its config declares a packed format.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, QuantcliError
from quantcli.loaders.closing import Closing
from quantcli.loaders.hf import Checkpoint, open_hf_checkpoint
from quantcli.loaders.safetensors import TensorInfo
from quantcli.quants.packed import PackedFormat, Scheme, detect_format

_ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


class PackedCheckpoint(Closing):
    """A `Checkpoint` look-alike whose quantized modules read as dequantized `.weight` tensors."""

    def __init__(self, inner: Checkpoint, fmt: type[PackedFormat], scheme: Scheme) -> None:
        self.inner = inner
        self.fmt = fmt
        self.scheme = scheme
        self.directory: Path = inner.directory
        self.config: dict[str, Any] = {
            k: v for k, v in inner.config.items() if k not in ("quantization_config", "quantization")
        }
        names = inner.tensor_names()
        present = set(names)
        self._modules: dict[str, list[str]] = {}  # dequantized weight name -> its packed tensors
        self._order: list[str] = []
        for name in names:
            module, _, suffix = name.rpartition(".")
            if suffix in fmt.parts and fmt.is_quantized(module, present):
                weight = f"{module}.weight"
                if weight not in self._modules:
                    self._modules[weight] = []
                    self._order.append(weight)
                self._modules[weight].append(name)
            else:
                self._order.append(name)

    @property
    def architecture(self) -> str | None:
        return self.inner.architecture

    def tensor_names(self) -> list[str]:
        return list(self._order)

    def __contains__(self, name: str) -> bool:
        return name in self._modules or (name in self.inner and name in self._order)

    def _parts(self, weight: str) -> dict[str, np.ndarray]:
        module = weight.removesuffix(".weight")
        return {n.removeprefix(module + "."): self.inner.read(n) for n in self._modules[weight]}

    def tensor_info(self, name: str) -> TensorInfo:
        if name not in self._modules:
            return self.inner.tensor_info(name)
        module = name.removesuffix(".weight")
        parts = {n.removeprefix(module + "."): self.inner.tensor_info(n) for n in self._modules[name]}
        first = next(iter(parts.values()))
        try:
            out, n = self.fmt.logical_shape({k: v.shape for k, v in parts.items()}, self.scheme)
        except (KeyError, ValueError):
            # a stored tensor missing, or of the wrong rank: the checkpoint does not match its config
            raise InputInvalid(
                f"{first.file}: {module} has {sorted(parts)}, not the tensors of a {self.fmt.name} weight"
            ) from None
        dtype = _ST_DTYPE[self.scheme.dtype]
        return replace(first, name=name, dtype=dtype, shape=(out, n), nbytes=out * n * (4 if dtype == "F32" else 2))

    def read(self, name: str) -> np.ndarray:
        if name not in self._modules:
            return self.inner.read(name)
        try:
            weight = self.fmt.dequantize(self._parts(name), self.scheme)
        except QuantcliError as exc:
            # the format names the bad tensor's role; say which module of which checkpoint
            raise type(exc)(f"{self.directory}: {name.removesuffix('.weight')}: {exc}", exc.exit_code) from None
        return weight.astype(self.scheme.np_dtype)

    def release(self, name: str) -> None:
        for part in self._modules.get(name, [name]):
            self.inner.release(part)

    def total_bytes(self) -> int:
        return sum(self.tensor_info(n).nbytes for n in self._order)

    def close(self) -> None:
        self.inner.close()


def maybe_packed(ckpt: Checkpoint) -> Checkpoint | PackedCheckpoint:
    """Wrap `ckpt` when its config declares one of the packed formats we read; otherwise return it as is."""
    found = detect_format(ckpt.config)
    if found is None:
        return ckpt
    fmt, scheme = found
    return PackedCheckpoint(ckpt, fmt, scheme)


def open_checkpoint(source: Path | str, *, dequantize_packed: bool = True) -> Checkpoint | PackedCheckpoint:
    """Open and validate an HF checkpoint (`loaders.hf`); a packed one reads back dequantized unless
    `dequantize_packed=False` asks for the stored tensors as they are."""
    ckpt = open_hf_checkpoint(source)
    return maybe_packed(ckpt) if dequantize_packed else ckpt
