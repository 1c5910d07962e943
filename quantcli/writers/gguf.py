"""The GGUF writer: every GGUF quantcli writes goes through `write_gguf` (layout notes: formats/gguf.md).

A file is a KV section (key, encoded bytes) in file order, a list of tensor infos, then each tensor's data
padded to the alignment. The metadata is written first; tensor data is produced and written one tensor at a
time (in chunks), so memory stays bounded by the largest tensor. The file goes to a temporary path, is hashed
while it is written and renamed only when complete (quantcli/atomic.py).

Keys are encoded here with the exact byte layout gguf-py's GGUFWriter produces (so `MetadataBuilder`, which
collects keys through gguf-py's public `add_*` helpers, gives the same bytes as llama.cpp's converter), with
long arrays (token lists, merges, scores) packed vectorised.
"""

from __future__ import annotations

import collections
import hashlib
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from quantcli import quants
from quantcli.atomic import atomic_path
from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from quantcli.loaders.gguf import NUMPY_DTYPES, SCALAR_FORMATS
from quantcli.quants.floats import f32_to_bf16_bits, quiet_bf16_nans

ALIGNMENT = 32  # gguf_init_empty() and GGUFWriter: no general.alignment key is ever written by us
GGUF_VERSION = 3

# NumPy dtypes of the numeric array element types, for packing long arrays in one call. Not bool: struct's
# "?" writes any true value as 1, a NumPy cast would keep it.
_ARRAY_DTYPES = {t: d for t, d in NUMPY_DTYPES.items() if t != GGUFValueType.BOOL}


def encode_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(raw)) + raw


def encode_value(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    """A KV value with its type tag, byte for byte as GGUFWriter packs it. Raises struct.error, TypeError,
    ValueError or OverflowError for a value its type cannot hold."""
    return struct.pack("<I", vtype) + _encode_bare(value, vtype, sub_type)


def _encode_bare(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    if vtype in SCALAR_FORMATS:
        return struct.pack(SCALAR_FORMATS[vtype], value)
    if vtype == GGUFValueType.STRING:
        return encode_string(value)
    if vtype != GGUFValueType.ARRAY:
        raise ValueError(f"invalid GGUF value type {vtype!r}")
    if not isinstance(value, (list, tuple, bytes)) or len(value) == 0:
        raise ValueError("a GGUF array is a non-empty sequence")
    if sub_type is None:
        sub_type = GGUFValueType.UINT8 if isinstance(value, bytes) else GGUFValueType.get_type(value[0])
        if not isinstance(value, bytes) and any(GGUFValueType.get_type(v) is not sub_type for v in value[1:]):
            raise ValueError("all items in a GGUF array have one type")
    head = struct.pack("<IQ", sub_type, len(value))
    if sub_type == GGUFValueType.STRING:
        encoded = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
        parts = [b""] * (2 * len(encoded))
        parts[0::2] = [n.tobytes() for n in np.array([len(e) for e in encoded], dtype="<u8")]
        parts[1::2] = encoded
        return head + b"".join(parts)
    if sub_type in _ARRAY_DTYPES and not isinstance(value, bytes) and len(value) > 16:
        array = np.asarray(value)
        if array.ndim == 1 and array.dtype.kind in "iufb":
            packed = array.astype(_ARRAY_DTYPES[sub_type], casting="unsafe")
            if np.array_equal(packed, array):  # out-of-range values: fail in struct.pack below
                return head + packed.tobytes()
    return head + b"".join(_encode_bare(v, sub_type) for v in value)


def encode_kv(key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    return encode_string(key) + encode_value(value, vtype, sub_type)


def encode_kv_u32(key: str, value: int) -> bytes:
    return encode_kv(key, value, GGUFValueType.UINT32)


def encode_kv_str(key: str, value: str | bytes) -> bytes:
    return encode_kv(key, value, GGUFValueType.STRING)


class MetadataBuilder:
    """Collects KV pairs through gguf-py's public GGUFWriter helpers (`add_block_count`, `add_tokenizer_model`,
    gguf.Metadata.set_gguf_meta_model ...): they know each key's name and value type. Nothing is written by
    it; `encoded()` gives the KV section for `write_gguf`."""

    def __init__(self, arch: str) -> None:
        import gguf  # the whole package (writer, vocab, metadata): only a conversion builds metadata here

        self.writer = gguf.GGUFWriter(path=None, arch=arch)

    def call(self, method: str, *args: Any) -> None:
        getattr(self.writer, method)(*args)

    def add_kv(self, key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> None:
        self.writer.add_key_value(key, value, vtype, sub_type)

    def add_tensor_info(self, name: str, numpy_shape: Sequence[int], qtype: GGMLQuantizationType) -> None:
        """Declared for gguf-py's parameter count (general.size_label), as the converter declares them."""
        self.writer.add_tensor_info(
            name, tuple(numpy_shape), np.dtype(np.float32), tensor_nbytes(qtype, tuple(reversed(numpy_shape))), qtype
        )

    def parameter_count(self) -> tuple[int, int, int, int]:
        return self.writer.get_total_parameter_count()

    def items(self) -> list[tuple[str, Any]]:
        return list(self.writer.kv_data[0].items())

    def encoded(self) -> list[tuple[str, bytes]]:
        return [(key, encode_kv(key, v.value, v.type, v.sub_type)) for key, v in self.writer.kv_data[0].items()]

    def values(self) -> dict[str, Any]:
        return {key: v.value for key, v in self.writer.kv_data[0].items()}


def tensor_nbytes(qtype: GGMLQuantizationType, ne: Sequence[int]) -> int:
    """Bytes of a tensor of `qtype` with dimensions `ne` (ne[0] = row length, a multiple of the block)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return math.prod(int(n) for n in ne[1:]) * (int(ne[0]) // block) * type_size


def pad(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class OutputTensor:
    """One tensor info of the output: name, ne exactly as stored (fastest dimension first; as many
    dimensions as the file records), type."""

    name: str
    ne: tuple[int, ...]
    type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.ne)


def metadata_bytes(kv: Sequence[tuple[str, bytes]], tensors: Sequence[OutputTensor]) -> bytes:
    """Header + KV section + tensor infos, zero-padded to the alignment."""
    parts = [b"GGUF", struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kv))]
    parts.extend(raw for _, raw in kv)
    offset = 0
    for t in tensors:
        parts.append(encode_string(t.name))
        parts.append(struct.pack(f"<I{len(t.ne)}QiQ", len(t.ne), *t.ne, int(t.type), offset))
        offset += pad(t.nbytes)
    meta = b"".join(parts)
    return meta + b"\0" * (pad(len(meta)) - len(meta))


def file_size(kv: Sequence[tuple[str, bytes]], tensors: Sequence[OutputTensor]) -> int:
    return len(metadata_bytes(kv, tensors)) + sum(pad(t.nbytes) for t in tensors)


def encode(data: np.ndarray, qtype: GGMLQuantizationType, name: str, threads: int | None = None) -> np.ndarray:
    """Float array -> the bytes GGUF stores for `qtype` (as convert_hf_to_gguf.py's gguf.quants does)."""
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype="<f4")
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype="<f2")  # same RNE cast as torch/NumPy
    if qtype == GGMLQuantizationType.BF16:
        # Round-to-nearest-even of the float32 bits, NaN kept quiet (gguf-py's and ggml's rule). Like the
        # converter, non-finite values pass through; chunked to bound the uint32 temporaries.
        flat = data.reshape(-1)
        out = np.empty(flat.size, dtype="<u2")
        step = 1 << 22
        for start in range(0, flat.size, step):
            out[start : start + step] = f32_to_bf16_bits(np.asarray(flat[start : start + step], dtype=np.float32))
        return out.reshape(data.shape)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint8)
    return quants.quantize(data, qtype, name=name, threads=threads)


def encode_stored(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """The bytes convert_hf_to_gguf.py writes for a tensor already stored as `qtype` (F32, F16 or BF16): the
    stored bits (no copy) — its cast to float32 and back is exact — except BF16 NaNs, which its float32
    round trip makes quiet."""
    if qtype == GGMLQuantizationType.BF16:
        return quiet_bf16_nans(data.view(np.uint16))
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return data
    raise ValueError(f"{qtype.name} is not a float type stored as is")


# A chunk this large or larger is "large": hashed beside its write, and held by the background writer one at
# a time (a caller reusing buffers for large chunks relies on that: engine.stream.ConverterTensors).
LARGE_CHUNK_BYTES = 1 << 20


class _HashingFile:
    """A binary file that hashes what is written to it (the --json sha256 without reading the file back).

    A chunk of _PARALLEL_BYTES or more is hashed on a helper thread while this thread writes it (hashlib and
    file writes release the GIL), and `write` returns once both are done, so the caller may release the
    chunk's pages as before. `times` (optional) accumulates the seconds spent writing ("write") and the
    hashing not hidden behind the write ("hash"): they stay a partition of the caller's time."""

    # Below this, a hand-over to the helper thread costs more than the hash (metadata, padding, small tensors).
    _PARALLEL_BYTES = LARGE_CHUNK_BYTES

    def __init__(self, fh: BinaryIO, times: dict[str, float] | None = None) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self.times = times
        self._to_hash: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._hashed: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._hasher: threading.Thread | None = None

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> int:
        view = _byte_view(data)
        started = time.perf_counter()
        if view.nbytes >= self._PARALLEL_BYTES:
            if self._hasher is None:
                self._hasher = threading.Thread(target=self._hash_loop, name="quantcli-sha256", daemon=True)
                self._hasher.start()
            self._to_hash.put(view)
            try:
                written = self.fh.write(view)
            finally:  # the chunk is hashed before the caller may drop it, whatever the write did
                wrote = time.perf_counter()
                failed = self._hashed.get()
            if failed is not None:
                raise failed
            hash_seconds = time.perf_counter() - wrote
        else:
            self.digest.update(view)
            hashed = time.perf_counter()
            hash_seconds = hashed - started
            written = self.fh.write(view)
            wrote = time.perf_counter()
            started += hash_seconds
        if self.times is not None:
            self.times["hash"] = self.times.get("hash", 0.0) + hash_seconds
            self.times["write"] = self.times.get("write", 0.0) + wrote - started
        if written != view.nbytes:
            raise OSError(f"short write: {written} of {view.nbytes} bytes")
        self.size += written
        return written

    def settle(self) -> None:
        """Everything is written once `write` returns: nothing to wait for."""

    def finish(self) -> None:
        """Everything is written once `write` returns: nothing to wait for."""

    def close(self) -> None:
        """End the helper thread (if one was started)."""
        if self._hasher is not None:
            self._to_hash.put(None)
            self._hasher.join()
            self._hasher = None

    def _hash_loop(self) -> None:
        while (view := self._to_hash.get()) is not None:
            try:
                self.digest.update(view)
            except BaseException as exc:  # handed to the writing thread, which raises it
                self._hashed.put(exc)
            else:
                self._hashed.put(None)


def _byte_view(data: bytes | bytearray | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast("B")


class _BackgroundWriter:
    """Hands each chunk to a writer thread, which writes and hashes it through a `_HashingFile` in order, so the
    streaming thread quantizes (or reads) the next chunk meanwhile. A chunk is kept (by reference) until it
    is written: a caller gives up its reference, never the memory under it (a view of a memory map that the
    caller releases would be faulted in again by the writer, so such sources write in the foreground).

    Back-pressure: `write` of a large chunk (LARGE_CHUNK_BYTES or more) waits until the writer is
    done with the large chunk before it, so the writer holds one large chunk at most (besides padding,
    metadata and small tensors, which never wait); `settle` waits for it to be written. The writer's first
    error is raised by the next `write`, `settle` or `finish`.
    `times`: the seconds the streaming thread waited for the writer, split between "write" and "hash" in
    the proportion of the writer thread's own writing and hashing seconds."""

    def __init__(self, out: _HashingFile, times: dict[str, float] | None) -> None:
        self.out = out
        self.times = times
        self.size = 0  # bytes handed over
        self._queue: collections.deque[memoryview] = collections.deque()
        self._large = 0  # large chunks queued or being written: 0 or 1
        self._ending = False
        self._error: BaseException | None = None
        self._waited = 0.0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._write_loop, name="quantcli-write", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> int:
        view = _byte_view(data)
        large = view.nbytes >= LARGE_CHUNK_BYTES
        started = time.perf_counter()
        with self._changed:
            while self._error is None and large and self._large:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            self._queue.append(view)
            self._large += large
            self._changed.notify_all()
        self._waited += time.perf_counter() - started
        self.size += view.nbytes
        return view.nbytes

    def settle(self) -> None:
        """Wait until the writer holds no large chunk: called before the next tensor is made, so the tensor
        being written and the one being made are never in memory together (the reader's next one is)."""
        started = time.perf_counter()
        with self._changed:
            while self._error is None and self._large:
                self._changed.wait()
            if self._error is not None:
                raise self._error
        self._waited += time.perf_counter() - started

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._ending:
                    self._changed.wait()
                if not self._queue:
                    return
                view = self._queue.popleft()
            try:
                self.out.write(view)
            except BaseException as exc:  # handed to the streaming thread, which raises it
                with self._changed:
                    self._error = exc
                    self._queue.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._large -= view.nbytes >= LARGE_CHUNK_BYTES
                self._changed.notify_all()

    def finish(self) -> None:
        """Wait until every chunk handed over is written (or raise the writer's error)."""
        started = time.perf_counter()
        with self._changed:
            self._ending = True
            self._changed.notify_all()
        self._thread.join()
        self._waited += time.perf_counter() - started
        if self._error is not None:
            raise self._error
        if self.times is not None:
            busy = self.out.times or {}
            busy_write, busy_hash = busy.get("write", 0.0), busy.get("hash", 0.0)
            hash_share = busy_hash / (busy_write + busy_hash) if busy_write + busy_hash > 0 else 0.0
            self.times["hash"] = self.times.get("hash", 0.0) + self._waited * hash_share
            self.times["write"] = self.times.get("write", 0.0) + self._waited * (1 - hash_share)

    def close(self) -> None:
        """Stop the writer thread: after `finish`, at once; after a failure, once its current write returns
        (what was queued is dropped: the temporary file is removed)."""
        with self._changed:
            self._ending = True
            self._queue.clear()
            self._changed.notify_all()
        self._thread.join()
        self.out.close()


TensorChunks = Callable[[OutputTensor], Iterable[bytes | bytearray | memoryview | np.ndarray]]


def write_gguf(
    path: Path,
    kv: Sequence[tuple[str, bytes]],
    tensors: Sequence[OutputTensor],
    chunks: TensorChunks,
    *,
    force: bool = False,
    on_tensor: Callable[[OutputTensor, int, int], None] | None = None,
    times: dict[str, float] | None = None,
    background: bool = False,
) -> tuple[int, str]:
    """Write the file atomically: metadata, then for each tensor the chunks `chunks(tensor)` yields, padded to
    the alignment. Returns (size, sha256 of the whole file). `times` receives the seconds spent hashing,
    writing and syncing (keys "hash", "write", "sync"); producing the chunks is the caller's time.

    `background`: the chunks are written on a writer thread (`_BackgroundWriter`) while the next ones are
    produced; a chunk must then stay valid while referenced (no memory-map view its source releases after
    the yield). `on_tensor` is called once a tensor's chunks are handed over."""
    meta = metadata_bytes(kv, tensors)
    total = len(tensors)
    with atomic_path(path, force) as tmp, open(tmp, "wb") as raw_fh:
        hashing = _HashingFile(raw_fh, {} if background else times)
        fh = _BackgroundWriter(hashing, times) if background else hashing
        try:
            fh.write(meta)
            for i, tensor in enumerate(tensors):
                fh.settle()
                start = fh.size
                for chunk in chunks(tensor):
                    fh.write(chunk)
                written = fh.size - start
                if written != tensor.nbytes:
                    raise AssertionError(f"{tensor.name}: wrote {written} bytes, planned {tensor.nbytes}")
                fh.write(b"\0" * (pad(written) - written))
                if on_tensor is not None:
                    on_tensor(tensor, i + 1, total)
            fh.finish()
            expected = len(meta) + sum(pad(t.nbytes) for t in tensors)
            if hashing.size != expected:
                raise AssertionError(f"wrote {hashing.size} bytes, planned {expected}")
        finally:
            fh.close()
        sha256 = hashing.digest.hexdigest()
        closing = time.perf_counter()
    if times is not None:  # close, fsync and rename (atomic_path): the data reaches the disk here
        times["sync"] = times.get("sync", 0.0) + time.perf_counter() - closing
    return hashing.size, sha256
