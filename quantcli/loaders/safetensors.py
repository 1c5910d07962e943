"""A validating, lazy reader for one .safetensors file (format notes: formats/safetensors.md).

The header (8-byte little-endian length + JSON) is parsed and checked completely before any tensor
byte is touched; tensors are then served one at a time as read-only views of a memory map (`read`) or read
into arrays of their own (`load`). BF16 is
returned as `ml_dtypes.bfloat16` (the `safetensors` NumPy API cannot represent it).
"""

from __future__ import annotations

import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, InputMissing, Unsupported

# Larger headers are refused (the safetensors library uses the same bound): a corrupt length field
# must not make us read gigabytes of "JSON".
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype name -> (bytes per element, NumPy dtype or None when we cannot represent it).
# BF16's and FP8's NumPy dtypes come from `ml_dtypes`, imported on first use (see `numpy_dtype`): 0.6 s
# that a GGUF-only job must not pay.
DTYPES: dict[str, tuple[int, Any]] = {
    "F64": (8, np.dtype("<f8")),
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, "bfloat16"),
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
    "I16": (2, np.dtype("<i2")),
    "I8": (1, np.dtype("i1")),
    "U64": (8, np.dtype("<u8")),
    "U32": (4, np.dtype("<u4")),
    "U16": (2, np.dtype("<u2")),
    "U8": (1, np.dtype("u1")),
    "BOOL": (1, np.dtype("bool")),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}


def numpy_dtype(dtype: str) -> np.dtype | None:
    """The NumPy dtype of safetensors dtype `dtype`, or None when we cannot represent it."""
    np_dtype = DTYPES[dtype][1]
    if isinstance(np_dtype, str):  # an ml_dtypes name
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, np_dtype))
    return np_dtype


# One file read of `SafetensorsFile.load`: as large as dd's blocks that reach the disk's sequential speed.
_READ_BYTES = 16 << 20

def _anonymous_array(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in an anonymous memory map of its own, unmapped when the array is dropped. Not NumPy's
    allocator: it asks for transparent huge pages on large arrays (madvise), whose faults compact memory —
    seconds of system time per GB while the page cache is full of the checkpoint —, and the C allocator
    keeps freed tensors of varied sizes in its arenas. MAP_POPULATE (Linux) backs the whole map at once:
    one call instead of a page fault per 4 KB page when the file read fills it (a fifth less system time
    on a 14.8 GB checkpoint)."""
    n = math.prod(shape) * dtype.itemsize
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, n, flags=flags), dtype=dtype).reshape(shape)


# dtypes a weight may have for conversion (others are refused by the converter, not by the reader).
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(ValueError):
    pass


class SafetensorsFile:
    """Header of one safetensors file, validated; `read(name)` maps one tensor."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._mmap: mmap.mmap | None = None
        self._parse()

    def _fail(self, what: str) -> InputInvalid:
        return InputInvalid(f"{self.path}: {what}")

    def _parse(self) -> None:
        try:
            file_size = os.stat(self.path).st_size
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise self._fail(f"file is {file_size} bytes, too short for a safetensors header")
                header_len = int.from_bytes(head, "little")
                if header_len < 2 or header_len > min(MAX_HEADER_BYTES, file_size - 8):
                    raise self._fail(
                        f"header length field is {header_len} but the file has {file_size - 8} bytes after it"
                        " (truncated or not a safetensors file)"
                    )
                raw = fh.read(header_len)
        except FileNotFoundError:
            raise InputMissing(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise InputInvalid(f"{self.path}: is a directory, expected a .safetensors file") from None
        except PermissionError:
            raise InputMissing(f"{self.path}: permission denied") from None
        except OSError as exc:  # a symlink loop, an I/O error: the file cannot be read
            raise InputMissing(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            raise self._fail(f"header names tensor {exc.args[0]!r} twice") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._fail(f"header is not valid JSON ({exc})") from None
        except ValueError as exc:  # an integer of more than 4300 digits (Python's int parsing limit)
            raise self._fail(f"header is not valid JSON ({exc})") from None
        except RecursionError:
            raise self._fail("header is not valid JSON (nested too deeply)") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        data_start = 8 + header_len
        data_size = file_size - data_start
        meta = header.pop("__metadata__", None)
        if meta is not None:
            if not isinstance(meta, dict):
                raise self._fail("__metadata__ is not an object")
            self.metadata = {str(k): str(v) for k, v in meta.items()}
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            info = self._check_entry(name, entry, data_start, data_size)
            spans.append((info.offset, info.offset + info.nbytes, name))
            self.tensors[name] = info
        spans.sort()
        for (_b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise self._fail(f"tensors {n0!r} and {n1!r} overlap (bytes {b1}..{e0})")

    def _check_entry(self, name: str, entry: Any, data_start: int, data_size: int) -> TensorInfo:
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise self._fail(f"{where}: header entry is not an object")
        dtype = entry.get("dtype")
        # isinstance first: an object or a list is unhashable and `in` would raise TypeError.
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise self._fail(f"{where}: unknown dtype {dtype!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise self._fail(f"{where}: shape {shape!r} is not a list of non-negative integers")
        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise self._fail(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] are not an increasing pair")
        itemsize = DTYPES[dtype][0]
        # Python ints: an int64 product wraps (2**32 x 2**32 x 2**32 -> 0) and would match an empty span.
        expected = math.prod(shape) * itemsize
        if end - begin != expected:
            raise self._fail(
                f"{where}: data_offsets span {end - begin} bytes but shape {shape} x {dtype} needs {expected}"
            )
        if end > data_size:
            raise self._fail(
                f"{where}: data_offsets end at byte {end} past the end of the data ({data_size} bytes; truncated file?)"
            )
        return TensorInfo(name, dtype, tuple(shape), self.path, data_start + begin, end - begin)

    def names(self) -> list[str]:
        """Tensor names sorted by name (the order safetensors and convert_hf_to_gguf.py iterate in)."""
        return sorted(self.tensors)

    def read(self, name: str) -> np.ndarray:
        """A read-only NumPy view (memory-mapped, nothing copied) of tensor `name`."""
        info = self.tensors[name]
        np_dtype = numpy_dtype(info.dtype)
        if np_dtype is None:
            raise Unsupported(
                f"{self.path}: tensor {name!r} has dtype {info.dtype}, which quantcli cannot read"
            )
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=np_dtype)
        arr = np.frombuffer(self._map(), dtype=np_dtype, count=info.n_elements, offset=info.offset)
        return arr.reshape(info.shape)

    def load(self, name: str, bf16_as_float32: bool = False) -> np.ndarray:
        """Tensor `name` in memory of its own (not a view of the map), read with positioned file reads of
        _READ_BYTES: sequential reads at the disk's speed, without a page fault per page, and each read
        releases the GIL, so a reader thread loads the next tensor while the current one is quantized.
        `bf16_as_float32`: BF16 is widened to float32 (exactly: the bits shifted up) one read at a time, so
        no BF16 copy of the whole tensor is held."""
        info = self.tensors[name]
        np_dtype = numpy_dtype(info.dtype)
        if np_dtype is None:
            raise Unsupported(f"{self.path}: tensor {name!r} has dtype {info.dtype}, which quantcli cannot read")
        widen = bf16_as_float32 and info.dtype == "BF16"
        dtype = np.dtype(np.float32) if widen else np_dtype
        if info.nbytes == 0:
            return np.empty(info.shape, dtype=dtype)
        out = _anonymous_array(info.shape, dtype)
        try:
            with open(self.path, "rb", buffering=0) as fh:
                if not widen:
                    self._read_into(fh, info.offset, memoryview(out.reshape(-1).view(np.uint8)))
                    return out
                bits = np.empty(min(_READ_BYTES // 2, info.n_elements), dtype=np.uint16)
                widened = out.reshape(-1).view(np.uint32)
                for start in range(0, info.n_elements, bits.size):
                    piece = bits[: min(bits.size, info.n_elements - start)]
                    self._read_into(fh, info.offset + 2 * start, memoryview(piece.view(np.uint8)))
                    np.left_shift(piece, 16, out=widened[start : start + piece.size], dtype=np.uint32)
                return out
        except OSError as exc:
            raise InputMissing(f"{self.path}: cannot read tensor {name!r} ({exc.strerror or exc})") from None

    def read_range(self, name: str, start: int, out: memoryview) -> None:
        """Bytes `start`.. of tensor `name`'s data into `out` (as many as it holds), by a positioned file read:
        neither a map nor memory of its own (a caller streaming a tensor through one buffer)."""
        info = self.tensors[name]
        if start < 0 or start + out.nbytes > info.nbytes:
            raise ValueError(f"{name}: bytes {start}..{start + out.nbytes} are outside its {info.nbytes}")
        try:
            with open(self.path, "rb", buffering=0) as fh:
                self._read_into(fh, info.offset + start, out)
        except OSError as exc:
            raise InputMissing(f"{self.path}: cannot read tensor {name!r} ({exc.strerror or exc})") from None

    def prefetch(self, name: str) -> None:
        """Ask the kernel to start reading tensor `name`'s data into the page cache (POSIX_FADV_WILLNEED):
        the reads that follow find it there instead of waiting for the disk."""
        info = self.tensors[name]
        if info.nbytes == 0 or not hasattr(os, "posix_fadvise"):
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, info.offset, info.nbytes, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def _read_into(self, fh: Any, offset: int, view: memoryview) -> None:
        fh.seek(offset)
        done = 0
        while done < view.nbytes:
            n = fh.readinto(view[done : done + _READ_BYTES])
            if not n:
                raise self._fail(f"ends inside the tensor data at byte {offset + done} (truncated while open?)")
            done += n

    def _map(self) -> mmap.mmap:
        if self._mmap is None:
            with open(self.path, "rb") as fh:
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mmap

    def release(self, name: str) -> None:
        """Drop tensor `name`'s pages from this process (they stay in the page cache; re-read on access).

        Without it every byte read through the map counts toward our RSS until the end of the run.
        """
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        info = self.tensors[name]
        start = info.offset - info.offset % mmap.PAGESIZE
        length = info.offset + info.nbytes - start
        if length > 0:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        # Views handed out keep the map alive (they hold a buffer reference); dropping ours is enough.
        self._mmap = None
