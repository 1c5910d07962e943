"""Read packed safetensors (compressed-tensors, MLX, GPTQ v1, AutoAWQ GEMM), FP8 and bitsandbytes checkpoints
back as an ordinary checkpoint.

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
from quantcli.loaders.safetensors import FLOAT_DTYPES, TensorInfo
from quantcli.quants.packed import PackedFormat, Scheme, detect_format

_ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
# Integer safetensors dtypes by element size: packed words are read as raw bits, signed or not.
_INT_DTYPES = {4: ("I32", "U32"), 8: ("I64", "U64")}


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
            module = _module_of(name, fmt)
            if module is not None and fmt.is_quantized(module, present):
                weight = f"{module}.weight"
                if weight not in self._modules:
                    self._modules[weight] = []
                    self._order.append(weight)
                self._modules[weight].append(name)
            else:
                self._order.append(name)
        # the tensors whose values give a weight's shape (bitsandbytes' quant state), read once: tensor_info
        # is asked for often, and must not read a weight's data
        self._layout_values: dict[str, dict[str, np.ndarray]] = {
            weight: {
                n.removeprefix(weight.removesuffix("weight")): np.asarray(inner.read(n))
                for n in parts
                if n.removeprefix(weight.removesuffix("weight")) in fmt.layout_parts
            }
            for weight, parts in self._modules.items()
        } if fmt.layout_parts else {}
        if fmt.writable:  # the integer group formats; the FP8 formats check their scales when they dequantize
            for weight in self._modules:
                self._check_layout(weight)
        for weight in self._layout_values:  # a quant state that does not parse is refused before any work
            self.tensor_info(weight)

    def _check_layout(self, weight: str) -> None:
        """Every packed tensor the format needs is there with the shape and dtype kind its layout gives for
        the weight's (out, in), before any data is read: dequantizing mismatched parts would fail inside
        NumPy (a reshape or broadcast error) instead of naming the tensor."""
        module = weight.removesuffix(".weight")
        parts = {n.removeprefix(module + "."): self.inner.tensor_info(n) for n in self._modules[weight]}
        scales = _scales_name(self.fmt)
        where = f"{self.directory}: packed {self.fmt.name} module {module!r}"
        if scales not in parts or len(parts[scales].shape) != 2 or 0 in parts[scales].shape:
            raise InputInvalid(f"{where}: {scales} is missing or not a non-empty matrix")
        out, n = _logical_shape(self.fmt, parts, self.scheme)
        for suffix, (dtype, shape) in self.fmt.layout(out, n, self.scheme).items():
            info = parts.get(suffix)
            if info is None:
                if suffix == "g_idx":  # optional: GPTQ without act-order may omit it
                    continue
                raise InputInvalid(f"{where}: tensor {suffix} is missing")
            kind = "f" if dtype.kind in "fV" else "i"  # V: ml_dtypes' bfloat16
            ok_dtypes = FLOAT_DTYPES if kind == "f" else _INT_DTYPES[dtype.itemsize]
            if info.shape != shape or info.dtype not in ok_dtypes:
                raise InputInvalid(
                    f"{where}: tensor {suffix} is {info.dtype} {list(info.shape)}, expected "
                    f"{'/'.join(ok_dtypes)} {list(shape)} for a ({out}, {n}) weight"
                )

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
            out, n = self.fmt.logical_shape_of(
                {k: v.shape for k, v in parts.items()}, self._layout_values.get(name, {}), self.scheme
            )
        except QuantcliError as exc:  # a layout value (bitsandbytes' quant state) the format refuses
            raise type(exc)(f"{first.file}: {module}: {exc}", exc.exit_code) from None
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
        parts = self._parts(name)
        out, n = self.tensor_info(name).shape
        if self.fmt.name == "ct" and [int(v) for v in parts["weight_shape"]] != [out, n]:
            raise InputInvalid(
                f"{self.directory}: {name.removesuffix('.weight')}.weight_shape is "
                f"{[int(v) for v in parts['weight_shape']]}, but its scales give ({out}, {n})"
            )
        try:
            weight = self.fmt.dequantize(parts, self.scheme)
        except QuantcliError as exc:
            # the format names the bad tensor's role; say which module of which checkpoint
            raise type(exc)(f"{self.directory}: {name.removesuffix('.weight')}: {exc}", exc.exit_code) from None
        return weight.astype(self.scheme.np_dtype)

    def release(self, name: str) -> None:
        for part in self._modules.get(name, [name]):
            self.inner.release(part)

    def load(self, name: str, bf16_as_float32: bool = False) -> np.ndarray:
        if name not in self._modules:
            return self.inner.load(name, bf16_as_float32)
        weight = self.read(name)  # dequantized: already memory of its own
        return weight.astype(np.float32) if bf16_as_float32 and self.scheme.dtype == "bfloat16" else weight

    def total_bytes(self) -> int:
        return sum(self.tensor_info(n).nbytes for n in self._order)

    def close(self) -> None:
        self.inner.close()


def _module_of(name: str, fmt: type[PackedFormat]) -> str | None:
    """The module a stored tensor belongs to when its name ends in one of the format's parts (which may hold
    dots: bitsandbytes' `weight.absmax`), else None."""
    for part in sorted(fmt.parts, key=len, reverse=True):
        if name.endswith("." + part):
            return name.removesuffix("." + part)
    return None


def _scales_name(fmt: type[PackedFormat]) -> str:
    return "weight_scale" if fmt.name == "ct" else "scales"


def _logical_shape(fmt: type[PackedFormat], parts: dict[str, TensorInfo], scheme: Scheme) -> tuple[int, int]:
    """(out, in) of the dequantized weight, from the packed tensors' shapes alone (no data read)."""
    return fmt.logical_shape({k: v.shape for k, v in parts.items()}, scheme)


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
