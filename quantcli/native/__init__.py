"""Optional C quantizers (quants.c), loaded with ctypes. Byte-identical to ggml_quantize_chunk.

The shared library `_quants<EXT_SUFFIX>` is built by `pip install` (setup.py -> quantcli_build.py) when a
C compiler is present. Without it, or when it was built from other sources than the ones shipped beside it
(a stale developer build), `available()` is False and quantcli runs on NumPy; nothing is ever compiled at
import time. `make install` (or `pip install -e .`) rebuilds it. QUANTCLI_NATIVE=0 (checked by
quantcli.quants.native_enabled) turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from quantcli.gguf_constants import GGML_QUANT_SIZES, GGMLQuantizationType

ABI_VERSION = 4
_DIR = Path(__file__).resolve().parent

T = GGMLQuantizationType
NATIVE_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {
        T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
        T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4,
    }
)  # fmt: skip
# to_float only (no quantizer here): the runtime widens F16 weights with the F16C instruction where it exists.
NATIVE_DEQUANT_TYPES = NATIVE_TYPES | {T.F16}

# Why the library is not used (None when it is); shown by `problem()` for diagnostics.
_problem: str | None = None


def source_hash(directory: Path = _DIR) -> str:
    """Same digest as quantcli_build.source_hash: sha256 over the C sources' names and bytes."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.[ch]")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _library_path() -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = _DIR / f"_quants{suffix}"
        if candidate.is_file():
            return candidate
    # Editable installs may keep the built library outside the source tree; ask the import system.
    try:
        spec = importlib.util.find_spec(f"{__name__}._quants")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin)
    return None


@functools.cache
def _lib() -> ctypes.CDLL | None:
    global _problem
    path = _library_path()
    if path is None:
        _problem = "not built (run `make install` or `pip install .` with a C compiler)"
        return None
    try:
        lib = ctypes.CDLL(str(path))
        lib.qc_abi_version.restype = ctypes.c_int
        lib.qc_source_hash.restype = ctypes.c_char_p
        if lib.qc_abi_version() != ABI_VERSION:
            _problem = f"{path.name} has ABI {lib.qc_abi_version()}, expected {ABI_VERSION}: rebuild it"
            return None
        built_from = lib.qc_source_hash().decode()
        if any(_DIR.glob("*.c")) and built_from != source_hash():
            # A developer edited quants.c after the last build: old bytes must not be used silently.
            _problem = f"{path.name} is older than quants.c: run `make install` to rebuild it"
            print(f"quantcli: native quantizers disabled, {_problem}", file=sys.stderr)
            return None
    except (OSError, AttributeError) as exc:
        _problem = f"cannot load {path}: {exc}"
        return None
    lib.qc_quantize.restype = ctypes.c_int
    lib.qc_quantize.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    lib.qc_dequantize.restype = ctypes.c_int
    lib.qc_dequantize.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    lib.qc_round_trip.restype = ctypes.c_int
    lib.qc_round_trip.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    lib.qc_gptq_columns.restype = None
    lib.qc_gptq_columns.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    _problem = None
    return lib


def available() -> bool:
    """True when the C library is built, current and loadable."""
    return _lib() is not None


def problem() -> str | None:
    """Why the C library is unavailable, or None."""
    _lib()
    return _problem


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Source element types qc_quantize widens itself (ggml type ids): no float32 copy of an F16/BF16 tensor.
_SRC_TYPES = {np.dtype(np.float32): int(T.F32), np.dtype(np.float16): int(T.F16)}


class NonFinite(ValueError):
    """A source row holds a NaN or an infinity (the caller reports where)."""


def quantize_rows(
    qtype: GGMLQuantizationType,
    rows: np.ndarray,
    imatrix: np.ndarray | None,
    threads: int | None,
    *,
    bf16: bool = False,
) -> np.ndarray | None:
    """(nrows, ncols) float32 or float16 rows (or BF16 bits as uint16 with `bf16=True`) -> uint8 (nrows,
    row_bytes), exactly ggml_quantize_chunk on the rows widened to float32; None if not native. Raises
    NonFinite when a value is NaN or infinite.

    `imatrix` is float32 (ncols,) or None (ignored by the types whose ggml quantizer ignores it). `threads`
    None uses every CPU this process may run on; the bytes never depend on it.
    """
    qtype = GGMLQuantizationType(qtype)
    lib = _lib()
    if lib is None or qtype not in NATIVE_TYPES:
        return None
    if bf16:
        x = np.ascontiguousarray(rows, dtype=np.uint16)
        src_type = int(T.BF16)
    else:
        x = np.asarray(rows)
        if x.dtype not in _SRC_TYPES:
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        src_type = _SRC_TYPES[x.dtype]
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of rows, got shape {x.shape}")
    nrows, ncols = x.shape
    block, type_size = GGML_QUANT_SIZES[qtype]
    if ncols % block:
        raise ValueError(f"row length {ncols} is not a multiple of {qtype.name}'s block size {block}")
    im = None
    if imatrix is not None:
        im = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if im.size != ncols:
            raise ValueError(f"imatrix has {im.size} values, expected {ncols}")
    out = np.empty((nrows, ncols // block * type_size), dtype=np.uint8)
    if nrows == 0:
        return out
    n_threads = default_threads() if threads is None else max(1, int(threads))
    rc = lib.qc_quantize(
        int(qtype),
        x.ctypes.data,
        src_type,
        out.ctypes.data,
        nrows,
        ncols,
        None if im is None else im.ctypes.data,
        n_threads,
    )
    if rc == -1:
        return None
    if rc == -3:
        raise NonFinite(f"non-finite value in {qtype.name} source rows")
    if rc == -4:
        raise MemoryError(f"native {qtype.name} quantizer: no memory for a row buffer")
    if rc != 0:
        raise RuntimeError(f"native {qtype.name} quantizer failed (code {rc})")
    return out


def dequantize_rows(
    qtype: GGMLQuantizationType, data: np.ndarray, ncols: int, threads: int | None = None
) -> np.ndarray | None:
    """uint8 (nrows, row_bytes) -> float32 (nrows, ncols), bit-identical to ggml's to_float; None if not native."""
    qtype = GGMLQuantizationType(qtype)
    lib = _lib()
    if lib is None or qtype not in NATIVE_DEQUANT_TYPES:
        return None
    block, type_size = GGML_QUANT_SIZES[qtype]
    if ncols % block:
        raise ValueError(f"row length {ncols} is not a multiple of {qtype.name}'s block size {block}")
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    row_bytes = ncols // block * type_size
    if raw.size % row_bytes:
        raise ValueError(f"{raw.size} bytes is not a whole number of {qtype.name} rows of {ncols} values")
    nrows = raw.size // row_bytes
    out = np.empty((nrows, ncols), dtype=np.float32)
    if nrows == 0:
        return out
    n_threads = default_threads() if threads is None else max(1, int(threads))
    rc = lib.qc_dequantize(int(qtype), raw.ctypes.data, out.ctypes.data, nrows, ncols, n_threads)
    if rc == -1:
        return None
    if rc != 0:
        raise RuntimeError(f"native {qtype.name} dequantizer failed (code {rc})")
    return out


def round_trip(vec_dot_type: GGMLQuantizationType, x: np.ndarray, out: np.ndarray, threads: int | None = None) -> bool:
    """`out` = the float32 rows `x` converted to `vec_dot_type` (F16, BF16, Q8_0 or Q8_K) and back, as ggml-cpu
    converts a matmul's activations (runtime/numerics.py holds the NumPy twins); `out` may be `x`. Both must
    be C-contiguous float32 of the same shape. False when the library is not available."""
    lib = _lib()
    if lib is None:
        return False
    for array in (x, out):
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            raise ValueError("round_trip: expected C-contiguous float32 arrays")
    if out.shape != x.shape or not out.flags.writeable:
        raise ValueError(f"round_trip: output of shape {out.shape} for input {x.shape}")
    if x.size == 0:
        return True
    ncols = x.shape[-1] if x.ndim else 1
    n_threads = default_threads() if threads is None else max(1, int(threads))
    rc = lib.qc_round_trip(int(vec_dot_type), x.ctypes.data, out.ctypes.data, x.size // ncols, ncols, n_threads)
    if rc != 0:
        raise ValueError(f"round_trip: {GGMLQuantizationType(vec_dot_type).name} rows of {ncols} (code {rc})")
    return True


def gptq_columns(
    w1: np.ndarray, hinv1: np.ndarray, err1: np.ndarray, start: int, stop: int, scales: np.ndarray,
    scale_rows: np.ndarray, codes: np.ndarray, qmin: int, qmax: int,
) -> bool:
    """GPTQ's column loop over columns start..stop-1 of one block (quants/gptq.py `_quantize_columns`, the
    same bytes); False when the library is not available. Every array must be C-contiguous: w1, err1 float32
    (block, out), hinv1 float32 (block, block), scales float32 (groups, out), scale_rows int64 (block,),
    codes int8 (block, out)."""
    lib = _lib()
    if lib is None:
        return False
    block, n_out = w1.shape
    for array, dtype, shape in (
        (w1, np.float32, (block, n_out)), (hinv1, np.float32, (block, block)), (err1, np.float32, (block, n_out)),
        (scales, np.float32, (scales.shape[0], n_out)), (scale_rows, np.int64, (block,)),
        (codes, np.int8, (block, n_out)),
    ):  # fmt: skip
        if array.dtype != dtype or array.shape != shape or not array.flags.c_contiguous:
            raise ValueError(f"gptq_columns: expected a C-contiguous {np.dtype(dtype)} array of shape {shape}")
    if not 0 <= start <= stop <= block or scale_rows[start:stop].max(initial=0) >= scales.shape[0]:
        raise ValueError("gptq_columns: column range or scale rows out of bounds")
    lib.qc_gptq_columns(
        w1.ctypes.data, hinv1.ctypes.data, err1.ctypes.data, block, n_out, start, stop, scales.ctypes.data,
        scale_rows.ctypes.data, codes.ctypes.data, qmin, qmax,
    )  # fmt: skip
    return True
