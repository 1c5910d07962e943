"""Streaming GGUF v3 writer on top of `gguf.GGUFWriter` (layout notes: formats/gguf.md).

Every tensor's info (name, logical shape, type, byte size) is declared first; the header, KV data and
tensor infos are written; then tensors are produced, encoded and written one at a time, so at most one
tensor (plus its encoded copy) is in memory. The file goes to a temporary path and is renamed only
when complete (quantcli/atomic.py).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from quantcli import quants
from quantcli.atomic import atomic_path
from quantcli.errors import InputInvalid
from quantcli.quants.floats import f32_to_bf16_bits


@dataclass
class PlannedTensor:
    """One output tensor: GGUF name, NumPy-order logical shape, type, and a producer of its values."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    produce: Callable[[], np.ndarray]  # float32 or float16 array of `shape`
    source_name: str = ""
    source_dtype: str = ""
    release: Callable[[], None] | None = None  # called once the tensor is written (drop mapped pages)

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape, dtype=np.int64))
        return n // block * type_size


def encode(
    data: np.ndarray, qtype: GGMLQuantizationType, name: str, threads: int | None = None
) -> np.ndarray:
    """Float array -> the bytes GGUF stores for `qtype` (as convert_hf_to_gguf.py's gguf.quants does)."""
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype="<f4")
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype="<f2")  # same RNE cast as torch/NumPy
    if qtype == GGMLQuantizationType.BF16:
        # Round-to-nearest-even of the float32 bits, NaN kept quiet (gguf-py's and ggml's rule). Like
        # the converter, non-finite values pass through; chunked to bound the uint32 temporaries.
        flat = data.reshape(-1)
        out = np.empty(flat.size, dtype="<u2")
        step = 1 << 22
        for start in range(0, flat.size, step):
            out[start : start + step] = f32_to_bf16_bits(
                np.asarray(flat[start : start + step], dtype=np.float32)
            )
        return out.reshape(data.shape)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint8)
    return quants.quantize(data, qtype, name=name, threads=threads)


# Little-endian NumPy dtypes of GGUF's numeric array element types.
_ARRAY_DTYPES = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


class _Writer(gguf.GGUFWriter):
    """GGUFWriter with a vectorised packer for long arrays (token lists, merges, scores).

    The stock packer builds the bytes element by element (~2 s for a 49k-token vocabulary); this one
    produces the same bytes, and defers to the stock code for everything else.
    """

    def _pack_val(
        self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None
    ) -> bytes:
        if (
            vtype == GGUFValueType.ARRAY
            and sub_type is not None
            and self.endianess == gguf.GGUFEndian.LITTLE
            and isinstance(val, (list, tuple))
            and len(val) > 16
        ):
            head = struct.pack("<I", vtype) if add_vtype else b""
            head += struct.pack("<IQ", sub_type, len(val))
            if sub_type == GGUFValueType.STRING:
                encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in val]
                lengths = np.array([len(e) for e in encoded], dtype="<u8")
                parts = [b""] * (2 * len(encoded))
                parts[0::2] = [n.tobytes() for n in lengths]
                parts[1::2] = encoded
                return head + b"".join(parts)
            if sub_type in _ARRAY_DTYPES:
                return head + np.asarray(val).astype(_ARRAY_DTYPES[sub_type], casting="unsafe").tobytes()
            if sub_type == GGUFValueType.BOOL:
                return head + np.asarray(val, dtype=bool).astype("u1").tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


# Float types are copied/cast faster than a cache entry could be hashed and read: never cached.
_PLAIN = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def _os_error_behind(tmp: Path, short_write: OSError) -> OSError:
    """The OS error (ENOSPC, EFBIG, EIO, ...) behind numpy's errno-less short write, found by writing on.

    The file is a temporary that atomic_path deletes, so appending to it is harmless.
    """
    try:
        with open(tmp, "ab", buffering=0) as fh:
            for _ in range(4):  # a write that still fits partly returns a short count; the next one fails
                fh.write(b"\0" * 65536)
    except OSError as probe:
        if probe.errno is not None:
            return OSError(probe.errno, probe.strerror)
    return short_write


class GGUFOutput:
    """Collects KV pairs and tensor plans, then streams the file."""

    def __init__(self, arch: str) -> None:
        self.writer = _Writer(path=None, arch=arch)
        self.tensors: list[PlannedTensor] = []

    def call(self, method: str, *args: Any) -> None:
        """A GGUFWriter helper (e.g. "add_block_count"): the key name and value type come from gguf."""
        getattr(self.writer, method)(*args)

    def add_kv(
        self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None
    ) -> None:
        self.writer.add_key_value(key, value, vtype, sub_type)

    def add_tensor(self, tensor: PlannedTensor) -> None:
        # Logical shape with a non-uint8 dtype: GGUFWriter stores it as-is (reversed into ne[] order).
        self.writer.add_tensor_info(
            tensor.name, tensor.shape, np.dtype(np.float32), tensor.nbytes, tensor.qtype
        )
        self.tensors.append(tensor)

    def parameter_count(self) -> tuple[int, int, int, int]:
        return self.writer.get_total_parameter_count()

    def keys(self) -> list[str]:
        return list(self.writer.kv_data[0])

    def encoded_kv(self) -> list[tuple[str, bytes]]:
        """The KV section as (key, encoded bytes) in file order, exactly as `write` stores it."""
        w = self.writer
        return [
            (
                key,
                w._pack_val(key, GGUFValueType.STRING, add_vtype=False)
                + w._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type),
            )
            for key, val in w.kv_data[0].items()
        ]

    def kv_values(self) -> dict[str, Any]:
        return {key: val.value for key, val in self.writer.kv_data[0].items()}

    def write(
        self,
        path: Path,
        *,
        force: bool = False,
        threads: int | None = None,
        on_tensor: Callable[[PlannedTensor], None] | None = None,
        tensor_cache: Any = None,
    ) -> str:
        """Write atomically to `path`; returns the file's SHA-256 (hex).

        `tensor_cache` (quantcli.jobstate.TensorCache) keeps quantized tensors across runs (--resume).
        """
        with atomic_path(path, force) as tmp:
            try:
                self.writer.write_header_to_file(path=tmp)
                self.writer.write_kv_data_to_file()
                self.writer.write_ti_data_to_file()
                for tensor in self.tensors:
                    data = tensor.produce()
                    if tuple(data.shape) != tensor.shape:
                        raise InputInvalid(
                            f"{tensor.name}: produced shape {data.shape}, planned {tensor.shape}"
                        )
                    key = None
                    if tensor_cache is not None and tensor.qtype not in _PLAIN:
                        key = tensor_cache.key(data, tensor.qtype)
                    hit = tensor_cache.get(key) if key else None
                    if hit is not None:
                        encoded = np.frombuffer(hit, np.uint8)
                    else:
                        encoded = encode(data, tensor.qtype, tensor.name, threads)
                        if key:
                            tensor_cache.put(key, encoded)
                    del data
                    if encoded.nbytes != tensor.nbytes:
                        raise InputInvalid(
                            f"{tensor.name}: encoded {encoded.nbytes} bytes, planned {tensor.nbytes}"
                        )
                    self.writer.write_tensor_data(encoded)
                    del encoded
                    if tensor.release is not None:
                        tensor.release()
                    if on_tensor is not None:
                        on_tensor(tensor)
            except OSError as exc:
                if exc.errno is None:  # ndarray.tofile: "N requested and M written", no reason given
                    raise _os_error_behind(tmp, exc) from None
                raise
            finally:
                self.writer.close()
            digest = hashlib.sha256()
            with open(tmp, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
        return digest.hexdigest()
