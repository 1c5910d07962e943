"""Quant-type registry and the public quantize/dequantize entry points.

One module per GGML type subclasses `QuantType` with `qtype=`; the subclass is registered by that
`gguf.GGMLQuantizationType`. A type implements `quantize_rows` / `dequantize_rows` on a 2-D float32
array of whole rows (vectorised across every block of every row); this module does validation, row
chunking (bounded memory), MoE imatrix slicing and the choice between NumPy and the C extension.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np

from quantcli.errors import InputInvalid, Unsupported
from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

_REGISTRY: dict[GGMLQuantizationType, type[QuantType]] = {}

# Rows per NumPy call: keeps temporaries bounded (~ a few MB of float32 per chunk) whatever the tensor size.
_CHUNK_ELEMENTS = 1 << 20


class QuantType:
    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    # True when ggml's quantize_<type> reads the importance matrix (Q8_0, TQ*, MXFP4 ignore it).
    uses_imatrix: ClassVar[bool] = False

    def __init_subclass__(cls, qtype: GGMLQuantizationType | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if qtype is None:
            return
        assert qtype not in _REGISTRY, f"{qtype.name} registered twice"
        cls.qtype = qtype
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
        _REGISTRY[qtype] = cls

    @classmethod
    def row_bytes(cls, ncols: int) -> int:
        return ncols // cls.block_size * cls.type_size

    @classmethod
    def quantize_rows(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 (nrows, ncols) -> uint8 (nrows, row_bytes). `imatrix` is float32 (ncols,) or None."""
        raise NotImplementedError

    @classmethod
    def dequantize_rows(cls, data: np.ndarray, ncols: int) -> np.ndarray:
        """uint8 (nrows, row_bytes) -> float32 (nrows, ncols)."""
        raise NotImplementedError


def to_qtype(qtype: GGMLQuantizationType | int | str) -> GGMLQuantizationType:
    if isinstance(qtype, str):
        try:
            return GGMLQuantizationType[qtype.upper()]
        except KeyError:
            raise Unsupported(f"unknown tensor type {qtype!r}") from None
    return GGMLQuantizationType(qtype)


def get(qtype: GGMLQuantizationType | int | str) -> type[QuantType]:
    qt = to_qtype(qtype)
    try:
        return _REGISTRY[qt]
    except KeyError:
        supported = ", ".join(t.name for t in supported_types())
        raise Unsupported(f"tensor type {qt.name} is not supported (supported: {supported})") from None


def supported_types() -> list[GGMLQuantizationType]:
    return sorted(_REGISTRY, key=int)


def native_enabled() -> bool:
    """The C extension is used unless QUANTCLI_NATIVE=0 or it could not be built/loaded."""
    if os.environ.get("QUANTCLI_NATIVE", "1") == "0":
        return False
    from quantcli import native

    return native.available()


def quantize(
    array: np.ndarray,
    qtype: GGMLQuantizationType | int | str,
    imatrix: np.ndarray | None = None,
    *,
    name: str = "tensor",
    threads: int | None = None,
    use_native: bool | None = None,
) -> np.ndarray:
    """Quantize `array` (shape (..., ncols), any float dtype) to GGML `qtype`.

    Returns uint8 of shape (..., row_bytes), byte-identical to ggml_quantize_chunk. `imatrix` holds
    per-column weights: (ncols,) or, for a 3-D expert tensor (n_expert, rows, ncols), (n_expert*ncols,).
    """
    cls = get(qtype)
    arr = np.asarray(array)
    if arr.ndim == 0:
        raise InputInvalid(f"{name}: cannot quantize a scalar")
    ncols = arr.shape[-1]
    if ncols % cls.block_size:
        raise InputInvalid(
            f"{name}: row length {ncols} is not a multiple of {cls.qtype.name}'s block size {cls.block_size}"
        )
    if use_native is None:
        use_native = native_enabled()
    lead = arr.shape[:-1]
    n_expert = arr.shape[0] if arr.ndim == 3 else 1
    rows_per_expert = int(np.prod(arr.shape[1:-1])) if arr.ndim == 3 else int(np.prod(lead, dtype=np.int64))
    rows2d = arr.reshape(-1, ncols)
    im = None
    if imatrix is not None and cls.uses_imatrix:
        im = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if im.size not in (ncols, ncols * n_expert):
            raise InputInvalid(f"{name}: imatrix has {im.size} values, expected {ncols * n_expert}")
        if im.size == ncols:
            im = np.tile(im, n_expert)
    out = np.empty((rows2d.shape[0], cls.row_bytes(ncols)), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // ncols)
    for expert in range(n_expert):
        e0 = expert * rows_per_expert
        e_im = None if im is None else im[expert * ncols : (expert + 1) * ncols]
        for r0 in range(e0, e0 + rows_per_expert, step):
            r1 = min(r0 + step, e0 + rows_per_expert)
            out[r0:r1] = _quantize_chunk(cls, rows2d[r0:r1], e_im, use_native, threads, name, r0)
    return out.reshape(*lead, cls.row_bytes(ncols))


def _quantize_chunk(
    cls: type[QuantType],
    rows: np.ndarray,
    imatrix: np.ndarray | None,
    use_native: bool,
    threads: int | None,
    name: str,
    row0: int,
) -> np.ndarray:
    if use_native:
        from quantcli import native

        # The C quantizer widens F16 rows itself and checks finiteness on the way (one pass, no float32 copy).
        try:
            result = native.quantize_rows(cls.qtype, rows, imatrix, threads)
        except native.NonFinite:
            refuse_non_finite(np.asarray(rows, dtype=np.float32), name, row0)
            raise
        if result is not None:
            return result
    chunk = np.ascontiguousarray(rows, dtype=np.float32)
    refuse_non_finite(chunk, name, row0)
    return cls.quantize_rows(chunk, imatrix)


def refuse_non_finite(chunk: np.ndarray, name: str, row0: int) -> None:
    finite = np.isfinite(chunk)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise InputInvalid(f"{name}: non-finite value at row {row0 + int(bad[0])}, column {int(bad[1])}")


def dequantize(
    data: np.ndarray,
    qtype: GGMLQuantizationType | int | str,
    shape: tuple[int, ...],
    *,
    threads: int | None = None,
    use_native: bool | None = None,
) -> np.ndarray:
    """Inverse of `quantize`: uint8 bytes of a tensor of logical `shape` -> float32 array of `shape`."""
    cls = get(qtype)
    if use_native is None:
        use_native = native_enabled()
    shape = tuple(int(s) for s in shape)
    ncols = shape[-1]
    nrows = int(np.prod(shape[:-1], dtype=np.int64))
    raw = np.frombuffer(np.ascontiguousarray(data).reshape(-1), dtype=np.uint8)
    expected = nrows * cls.row_bytes(ncols)
    if raw.size != expected:
        raise InputInvalid(f"{cls.qtype.name} data has {raw.size} bytes, expected {expected} for shape {shape}")
    raw = raw.reshape(nrows, cls.row_bytes(ncols))
    out = np.empty((nrows, ncols), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // ncols)
    for r0 in range(0, nrows, step):
        out[r0 : r0 + step] = _dequantize_chunk(cls, raw[r0 : r0 + step], ncols, use_native, threads)
    return out.reshape(shape)


def _dequantize_chunk(
    cls: type[QuantType], raw: np.ndarray, ncols: int, use_native: bool, threads: int | None
) -> np.ndarray:
    if use_native:
        from quantcli import native

        result = native.dequantize_rows(cls.qtype, raw, ncols, threads)
        if result is not None:
            return result
    return cls.dequantize_rows(raw, ncols)
