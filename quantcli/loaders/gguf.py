"""Read a GGUF file (version 2/3, little-endian): metadata, tensor infos, memory-mapped tensor data.

A small, validating reader of our own instead of gguf.GGUFReader: it keeps every KV pair's *raw bytes*
(llama-quantize copies them verbatim, so re-emitting the same bytes is the simplest way to be
byte-identical), checks every length and offset against the file size before trusting it, and does not
build one NumPy object per vocabulary string (GGUFReader takes seconds on a 150k-token vocab).
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, InputMissing, Unsupported, printable
from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from quantcli.loaders.closing import Closing

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# Sanity bounds: a corrupt length field must fail fast instead of allocating gigabytes.
_MAX_STRING = 1 << 30
_MAX_NAME = 1 << 16
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 20

_U64 = struct.Struct("<Q")
# GGUF's scalar value types: struct formats (little-endian; bool is one byte) and the NumPy dtypes of array
# elements. The writer (writers/gguf.py) encodes with the same tables.
SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class KV:
    key: str
    type: GGUFValueType
    value: Any  # Python scalar / str, or list / np.ndarray for arrays
    raw: bytes  # the complete on-disk encoding (key, type, value) exactly as found
    array_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne[0] is the row length
    type: GGMLQuantizationType
    offset: int  # relative to the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))


def type_nbytes(qtype: GGMLQuantizationType, ne: tuple[int, ...]) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n_rows = math.prod(ne[1:])
    return n_rows * (ne[0] // block) * size


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise InputInvalid(f"{self.path}: truncated GGUF ({what} at byte {self.pos} needs {n} bytes)")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str, limit: int = _MAX_STRING) -> str:
        n = self.unpack("<Q", what)
        if n > limit:
            raise InputInvalid(f"{self.path}: {what} length {n} is implausible (corrupt GGUF?)")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputInvalid(f"{self.path}: {what} is not valid UTF-8") from None

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.unpack("<i", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise InputInvalid(f"{self.path}: unknown GGUF value type {raw} for {what}") from None


class GGUFFile(Closing):
    """A GGUF file opened read-only with mmap. Use as a context manager or call close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputMissing(f"{self.path} does not exist")
        self._fh = open(self.path, "rb")
        try:
            size = self.path.stat().st_size
            if size < 24:
                raise InputInvalid(f"{self.path}: too small to be a GGUF file ({size} bytes)")
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._buf = self._mm
            self._parse()
        except BaseException:
            self.close()
            raise

    # --- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        cur = _Cursor(self._buf, self.path)
        magic = bytes(self._buf[:4])
        if magic != GGUF_MAGIC:
            raise InputInvalid(f"{self.path}: not a GGUF file (magic {magic!r})")
        cur.pos = 4
        self.version = cur.unpack("<I", "version")
        if self.version not in (2, 3):
            raise Unsupported(f"{self.path}: GGUF version {self.version} is not supported (2 or 3 expected)")
        n_tensors = cur.unpack("<q", "tensor count")
        n_kv = cur.unpack("<q", "KV count")
        # Each KV / tensor info becomes a few hundred bytes of Python objects (~25x its bytes on disk), so
        # the counts are bounded by what real files hold (tens of KVs, a few thousand tensors), not only by
        # the file size: 10^6 one-byte KVs in a 19 MB file took 450 MB and 6 s to parse.
        if not (0 <= n_tensors <= MAX_TENSORS and 0 <= n_kv <= MAX_KV):
            raise InputInvalid(f"{self.path}: implausible counts (tensors {n_tensors}, KVs {n_kv})")

        self.kv: dict[str, KV] = {}
        for _ in range(n_kv):
            start = cur.pos
            key = cur.string("KV key", _MAX_NAME)
            vtype = cur.value_type(f"KV {key!r}")
            array_type = None
            if vtype == GGUFValueType.ARRAY:
                array_type = cur.value_type(f"array type of {key!r}")
                value = self._read_array(cur, key, array_type)
            else:
                value = self._read_scalar(cur, key, vtype)
            if key in self.kv:
                raise InputInvalid(f"{self.path}: duplicate KV key {key!r}")
            self.kv[key] = KV(key, vtype, value, bytes(self._buf[start : cur.pos]), array_type)

        alignment = self.kv.get("general.alignment")
        self.alignment = DEFAULT_ALIGNMENT
        if alignment is not None:
            if (
                alignment.type != GGUFValueType.UINT32
                or alignment.value <= 0
                or alignment.value & (alignment.value - 1)
            ):
                raise InputInvalid(f"{self.path}: general.alignment must be a power-of-two u32")
            self.alignment = int(alignment.value)

        infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
        for _ in range(n_tensors):
            name = cur.string("tensor name", _MAX_NAME)
            label = printable(name)
            n_dims = cur.unpack("<I", f"n_dims of {label}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise InputInvalid(f"{self.path}: tensor {label} has {n_dims} dimensions")
            cur.need(8 * n_dims, f"shape of {label}")
            ne = tuple(int(v) for v in struct.unpack_from(f"<{n_dims}q", self._buf, cur.pos))
            cur.pos += 8 * n_dims
            raw_type = cur.unpack("<i", f"type of {label}")
            offset = cur.unpack("<Q", f"offset of {label}")
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise Unsupported(f"{self.path}: tensor {label} has unknown ggml type {raw_type}") from None
            if any(d <= 0 for d in ne):
                raise InputInvalid(f"{self.path}: tensor {label} has shape {list(ne)}")
            block = GGML_QUANT_SIZES[qtype][0]
            if ne[0] % block:
                raise InputInvalid(
                    f"{self.path}: tensor {label} row length {ne[0]} is not a multiple of {block}"
                )
            infos.append((name, ne, qtype, offset))

        self.meta_end = cur.pos
        self.data_offset = (cur.pos + self.alignment - 1) // self.alignment * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        data_size = len(self._buf) - self.data_offset
        for name, ne, qtype, offset in infos:
            if name in self.tensors:
                raise InputInvalid(f"{self.path}: duplicate tensor name {name!r}")
            nbytes = type_nbytes(qtype, ne)
            if offset % self.alignment or offset + nbytes > data_size:
                raise InputInvalid(
                    f"{self.path}: tensor {printable(name)} data [{offset}, {offset + nbytes}) lies outside the file "
                    f"or is misaligned (data section is {max(data_size, 0)} bytes)"
                )
            self.tensors[name] = TensorInfo(name, ne, qtype, offset, nbytes)

    def _read_scalar(self, cur: _Cursor, key: str, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return cur.string(f"value of {key!r}")
        return cur.unpack(SCALAR_FORMATS[vtype], f"value of {key!r}")

    def _read_array(self, cur: _Cursor, key: str, array_type: GGUFValueType) -> Any:
        n = cur.unpack("<Q", f"array length of {key!r}")
        if array_type == GGUFValueType.ARRAY:
            raise Unsupported(f"{self.path}: nested arrays ({key!r}) are not supported")
        if array_type == GGUFValueType.STRING:
            return self._read_strings(cur, key, n)
        dtype = np.dtype(NUMPY_DTYPES[array_type])
        cur.need(n * dtype.itemsize, f"array {key!r}")
        arr = np.frombuffer(self._buf, dtype=dtype, count=n, offset=cur.pos).copy()
        cur.pos += n * dtype.itemsize
        return arr.astype(bool) if array_type == GGUFValueType.BOOL else arr

    def _read_strings(self, cur: _Cursor, key: str, n: int) -> list[str]:
        """A string array, in one tight loop (vocabularies have 10^5 entries; a hostile file may claim
        millions of empty strings, each still needs its 8-byte length, so n is bounded by the file)."""
        buf, pos, end = self._buf, cur.pos, len(self._buf)
        if n > (end - pos) // 8:
            raise InputInvalid(f"{self.path}: array {key!r} claims {n} strings, more than the file can hold")
        unpack = _U64.unpack_from
        out: list[str] = [""] * n
        try:
            for i in range(n):
                (length,) = unpack(buf, pos)
                pos += 8
                stop = pos + length
                if stop > end:
                    raise InputInvalid(f"{self.path}: truncated GGUF (element {i} of {key!r})")
                if length:
                    out[i] = buf[pos:stop].decode("utf-8")
                pos = stop
        except struct.error:
            raise InputInvalid(f"{self.path}: truncated GGUF (array {key!r})") from None
        except UnicodeDecodeError:
            raise InputInvalid(f"{self.path}: an element of {key!r} is not valid UTF-8") from None
        cur.pos = pos
        return out

    # --- access --------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise InputInvalid(f"{self.path}: general.architecture is missing")
        return arch

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a read-only uint8 view of the mapping (no copy)."""
        info = self.tensors[name]
        start = self.data_offset + info.offset
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=start)

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        """Drop the tensor's pages from this process's resident set (they stay in the page cache).

        Streaming a whole model through one mapping would otherwise leave every page touched so far
        resident, so peak RSS would grow to the model size (llama-quantize unmaps each weight too).
        """
        advise = getattr(self._mm, "madvise", None)
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        if advise is None or dontneed is None:
            return
        info = self.tensors[name]
        start = self.data_offset + info.offset + begin
        stop = self.data_offset + info.offset + (info.nbytes if end is None else end)
        first_page = start // mmap.PAGESIZE * mmap.PAGESIZE
        if stop <= first_page:
            return
        try:
            advise(dontneed, first_page, stop - first_page)
        except (OSError, ValueError):
            pass

    def tensor_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 in NumPy shape (dequantized like llama.cpp's to_float)."""
        from quantcli import quants

        info = self.tensors[name]
        raw = self.tensor_bytes(name)
        shape = info.numpy_shape
        if info.type == GGMLQuantizationType.F32:
            return raw.view("<f4").reshape(shape)
        if info.type == GGMLQuantizationType.F16:
            return raw.view("<f2").astype(np.float32).reshape(shape)
        return quants.dequantize(raw, info.type, shape)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a NumPy view still references the map; the GC closes it later
                pass
        self._fh.close()


def read_gguf(path: str | Path) -> GGUFFile:
    return GGUFFile(path)


def kv_as_dict(f: GGUFFile) -> dict[str, Any]:
    return {k: v.value for k, v in f.kv.items()}


__all__ = ["GGUFFile", "KV", "TensorInfo", "read_gguf", "type_nbytes", "kv_as_dict", "DEFAULT_ALIGNMENT"]


def is_gguf_file(path: Path | str) -> bool:
    """A file named *.gguf or starting with the GGUF magic (anything else is read as an HF checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"GGUF"
