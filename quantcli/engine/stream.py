"""Where each output tensor's bytes come from: the one streaming stage between a source and the GGUF writer.

* `ConverterTensors`: an HF checkpoint's tensors encoded as convert_hf_to_gguf.py stores them (read ->
  architecture transform -> float -> encoded at the tensor's type). With `as_source=True` it stands for the
  lossless intermediate file the two-step pipeline would write, whose bytes `requantized_chunks` reads.
* `requantized_chunks`: llama-quantize's per-tensor step: copy the bytes if the type stays, else decode and
  re-encode in row slabs (per expert for 3-D tensors, each with its own imatrix slice).

A tensor cache (quantcli.jobstate.TensorCache, `--resume`) keeps quantized bytes across runs, keyed by what
decides them. `ConverterTensors` reads the next tensor on a helper thread while the current one is used
(docs/engine.md, "Overlap"); a GGUF source holds only the current tensor.

Both sources add the seconds the streaming thread spends to a `stage_times()` dict (the --json `stages`):
"read" (checkpoint bytes to float, or waiting for the helper thread that reads them; a memory-mapped GGUF
file is read where its pages are first touched, so its reads fall into "quantize" or "write"), "transform"
(the architecture's transforms), "quantize" (every encode and decode between float and a GGML type, the
intermediate's included); the GGUF writer adds "hash", "write" and "sync" (close, fsync, rename).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from quantcli import quants
from quantcli.errors import InputInvalid
from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType
from quantcli.plan.core import TensorDecision
from quantcli.writers.gguf import LARGE_CHUNK_BYTES, encode, encode_stored

if TYPE_CHECKING:  # an HF source is imported by the job that opens one, not by a GGUF -> GGUF run
    from quantcli.sources.hf import SourceTensor

_T = GGMLQuantizationType
# Float types are copied/cast faster than a cache entry could be hashed and read: never cached.
_FLOATS = (_T.F32, _T.F16, _T.BF16)
# Rows are converted to float32 in slabs of at most this many elements (16 MiB of float32).
_SLAB_ELEMENTS = 4 << 20
STAGES = ("read", "transform", "quantize", "hash", "write", "sync")
# A stored tensor passed through is streamed in pieces of this size to twice it (ConverterTensors.tensor_chunks):
# large chunks for the writer (writers.gguf.LARGE_CHUNK_BYTES), small enough to stay in the CPU's caches.
_PIECE_BYTES = 16 << 20
assert _PIECE_BYTES >= LARGE_CHUNK_BYTES
_STORED_DTYPES = {_T.F32: np.float32, _T.F16: np.float16, _T.BF16: np.uint16}


def stage_times() -> dict[str, float]:
    """Seconds per stage of the streaming stage, all zero (STAGES, in pipeline order)."""
    return dict.fromkeys(STAGES, 0.0)


class TensorBytes(Protocol):
    """A source of stored tensor bytes: a GGUF file (`loaders.gguf.GGUFFile`) or `ConverterTensors`."""

    def tensor_bytes(self, name: str) -> np.ndarray: ...

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None: ...


class ConverterTensors:
    """The bytes of the GGUF convert_hf_to_gguf.py writes, made in memory one tensor at a time.

    Once `read_ahead` has given the order the tensors will be asked for in, each tensor is read (checkpoint
    file reads, BF16 widened to float32, a stored tensor's NaN check) on a helper thread while the one
    before it is transformed, encoded and written: two tensors' read values are in memory at most."""

    def __init__(
        self,
        tensors: Sequence[SourceTensor],
        threads: int | None = None,
        tensor_cache: Any = None,
        times: dict[str, float] | None = None,
    ) -> None:
        self.by_name = {t.name: t for t in tensors}
        self.threads = threads
        self.tensor_cache = tensor_cache
        self.times = stage_times() if times is None else times
        self._name: str | None = None
        self._raw: np.ndarray | None = None
        self._release_stored: Callable[[], None] | None = None  # a mapped stored tensor's pages, once written
        self._after: dict[str, str] = {}  # the tensor asked for after each one (read_ahead)
        self._mapped_stored = True  # without read-ahead every read is through the map
        self._reader: ThreadPoolExecutor | None = None  # one thread for the whole stream
        self._ahead: tuple[str, Future[np.ndarray]] | None = None  # the tensor being read ahead
        self._pieces: list[np.ndarray] | None = None  # tensor_chunks' two buffers
        self._reading_ahead = False

    def read_ahead(self, names: Sequence[str], mapped_stored: bool = False) -> None:
        """The tensors will be asked for in this order: read each one while the one before it is used.
        Without it (a size target's cost pass visits a subset) every read happens when asked for.
        `mapped_stored`: a tensor whose stored bits are the intermediate's is read through the memory map
        (its pages faulted in by the NaN check, released when the tensor is released) rather than into
        memory of its own — for a recipe, which re-quantizes it and writes only the new bytes: no copy and
        no fresh pages, the system time file reads cost."""
        self._after = dict(zip(names, names[1:], strict=False))
        self._reading_ahead = True
        self._mapped_stored = mapped_stored

    def tensor_bytes(self, name: str) -> np.ndarray:
        if self._name == name and self._raw is not None:
            return self._raw
        self._drop()
        tensor = self.by_name[name]
        started = time.perf_counter()
        data = self._take(tensor)
        self._read_following(name)
        read = time.perf_counter()
        self.times["read"] += read - started
        if tensor.read_stored is not None:
            raw = data
            if self._mapped_stored or tensor.load_stored is None:  # the map's pages: released once used
                self._release_stored = tensor.release
        else:
            data = tensor.transform(data)
            self.times["transform"] += time.perf_counter() - read
            if tensor.encoded:  # stored bytes passed through (an MXFP4 checkpoint's experts): nothing to encode
                raw = data
            elif tuple(data.shape) != tensor.shape:
                raise InputInvalid(f"{tensor.name}: produced shape {data.shape}, planned {tensor.shape}")
            else:
                raw = self._encoded(data, tensor)
            del data
            if tensor.release is not None:
                tensor.release()  # drop the checkpoint's mapped pages: only the encoded copy is kept
        self._name, self._raw = name, np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        if self._raw.nbytes != tensor.nbytes:
            raise InputInvalid(f"{tensor.name}: encoded {self._raw.nbytes} bytes, planned {tensor.nbytes}")
        return self._raw

    def tensor_chunks(self, name: str) -> Iterator[np.ndarray]:
        """The tensor's output bytes: `tensor_bytes(name)` whole, or, for a tensor of _PIECE_BYTES or more whose
        stored bits are the output's while reading ahead, in pieces read from the file into two buffers used
        in turn. Such a tensor (most of a BF16 -> BF16 conversion) then costs no memory of its own and no page
        faults. Every piece is a large chunk for the background writer (writers.gguf.LARGE_CHUNK_BYTES), which
        holds one at most and none once the next tensor starts, so when a piece has been handed over, the one
        before it is written and its buffer free."""
        tensor = self.by_name[name]
        if not self._piecewise(tensor):
            yield self.tensor_bytes(name)
            return
        assert tensor.read_stored_range is not None and tensor.prefetch is not None
        self._drop()
        tensor.prefetch()
        self._read_following(name)
        if self._pieces is None:
            self._pieces = [np.empty(2 * _PIECE_BYTES, np.uint8) for _ in range(2)]
        # Pieces of _PIECE_BYTES up to twice that (the remainder spread over them), whole elements each.
        count = tensor.nbytes // _PIECE_BYTES
        itemsize = np.dtype(_STORED_DTYPES[tensor.type]).itemsize
        bounds = [tensor.nbytes * i // count // itemsize * itemsize for i in range(count)] + [tensor.nbytes]
        for i in range(count):
            started = time.perf_counter()
            piece = self._pieces[i % 2][: bounds[i + 1] - bounds[i]]
            tensor.read_stored_range(bounds[i], memoryview(piece))
            encoded = encode_stored(piece.view(_STORED_DTYPES[tensor.type]), tensor.type).reshape(-1).view(np.uint8)
            self.times["read"] += time.perf_counter() - started
            yield encoded

    def _piecewise(self, tensor: SourceTensor) -> bool:
        return (
            self._reading_ahead and not self._mapped_stored and tensor.read_stored_range is not None
            and tensor.nbytes >= _PIECE_BYTES
        )  # fmt: skip

    def _read_following(self, name: str) -> None:
        """Start on the tensor asked for after `name`: read it on the helper thread, or, when it will be
        streamed in pieces, have the kernel read it ahead into the page cache."""
        following = self._after.get(name)
        if following is None:
            return
        tensor = self.by_name[following]
        if self._piecewise(tensor):
            assert tensor.prefetch is not None
            tensor.prefetch()
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="quantcli-read")
        self._ahead = following, self._reader.submit(self._read, tensor)

    def _take(self, tensor: SourceTensor) -> np.ndarray:
        """The tensor's read values: from the helper thread when it was read ahead, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead[0] == tensor.name:
                return ahead[1].result()  # an error met on the reader thread is raised here
            wait([ahead[1]])  # a NumPy call cannot be cut short; an error it met is met again if asked for
        return self._read(tensor)

    def _read(self, tensor: SourceTensor) -> np.ndarray:
        """What the helper thread does: the checkpoint's values (float32 / float16), or the output's bytes for
        a tensor whose stored bits are the output's (copied only where a BF16 NaN needs its quiet bit); with
        read-ahead, by file reads into memory of its own where the source has them."""
        if tensor.read_stored is not None:
            stored = tensor.read_stored if self._mapped_stored or tensor.load_stored is None else tensor.load_stored
            return encode_stored(stored(), tensor.type)
        return (tensor.load if self._after and tensor.load is not None else tensor.read)()

    def _encoded(self, data: np.ndarray, tensor: SourceTensor) -> np.ndarray:
        key = None
        if self.tensor_cache is not None and tensor.type not in _FLOATS:
            key = self.tensor_cache.key(data, tensor.type)
        hit = self.tensor_cache.get(key) if key else None
        if hit is not None:
            raw = np.frombuffer(hit, np.uint8)
        else:
            started = time.perf_counter()
            raw = encode(data, tensor.type, tensor.name, self.threads)
            self.times["quantize"] += time.perf_counter() - started
            if key:
                self.tensor_cache.put(key, raw)
        return raw

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        if end is None and begin == 0 and self._name == name:  # the whole tensor is written
            self._drop()

    def _drop(self) -> None:
        self._name, self._raw = None, None
        if self._release_stored is not None:
            self._release_stored()
            self._release_stored = None

    def close(self) -> None:
        """End the reader thread once the read it is in returns (an interrupted or failed stream leaves one)."""
        self._ahead = None
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None


def source_rows(raw: np.ndarray, qtype: GGMLQuantizationType, nrows: int, ncols: int) -> np.ndarray:
    """Rows as `quants.quantize` takes them: F32 and F16 as they are stored (the quantizer widens F16 to
    float32 exactly, row by row, without a float32 copy of the slab), other types dequantized to float32."""
    if qtype == _T.F32:
        return raw.view("<f4").reshape(nrows, ncols)
    if qtype == _T.F16:
        return raw.view("<f2").reshape(nrows, ncols)
    return quants.dequantize(raw, qtype, (nrows, ncols))


def requantized_chunks(
    src: TensorBytes,
    d: TensorDecision,
    weights: np.ndarray | None,
    threads: int | None,
    tensor_cache: Any = None,
    times: dict[str, float] | None = None,
) -> Iterator[np.ndarray | bytes]:
    """One tensor's new bytes (without padding), as llama-quantize writes them; the decode and re-encode
    seconds go to `times["quantize"]`."""
    times = stage_times() if times is None else times
    raw = src.tensor_bytes(d.name)
    if not d.changes:
        yield raw
        src.release(d.name)
        return
    key = None
    if tensor_cache is not None:  # --resume: the quantized bytes depend on the source bytes, type, imatrix
        key = tensor_cache.key(raw, d.type, weights, ne=list(d.ne), src_type=d.src_type.name)
        hit = tensor_cache.get(key)
        if hit is not None:
            yield hit
            src.release(d.name)
            return
    ne = d.ne
    ncols = ne[0]
    rows_per_matrix = ne[1] if len(ne) > 1 else 1
    n_matrices = math.prod(ne[2:])
    block, size = GGML_QUANT_SIZES[d.src_type]
    src_row = ncols // block * size
    per_expert_weights = weights is not None and len(ne) > 2 and weights.size == ncols * ne[2]
    step = max(1, _SLAB_ELEMENTS // ncols)
    parts: list[bytes] | None = [] if key is not None else None
    for m in range(n_matrices):
        im = weights
        if per_expert_weights:
            im = weights[m * ncols : (m + 1) * ncols]  # type: ignore[index]
        for r0 in range(0, rows_per_matrix, step):
            r1 = min(r0 + step, rows_per_matrix)
            first = m * rows_per_matrix + r0
            begin, end = first * src_row, (first + r1 - r0) * src_row
            started = time.perf_counter()
            rows = source_rows(raw[begin:end], d.src_type, r1 - r0, ncols)
            encoded = quants.quantize(rows, d.type, im, name=d.name, threads=threads)
            times["quantize"] += time.perf_counter() - started
            del rows
            if parts is not None:
                parts.append(encoded.tobytes())
            yield encoded  # the array itself: the writer takes its buffer, no bytes copy
            src.release(d.name, begin, end)
    if key is not None and parts is not None:
        tensor_cache.put(key, b"".join(parts))
    src.release(d.name)
