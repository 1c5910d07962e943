"""The real llama.cpp, built from the vendored tree of the llama-cpp-python sdist (scripts/build_llamacpp.sh).

`ggml()` gives ctypes access to libggml-base (ggml_quantize_chunk and each type's to_float), `tool(name)`
the path of a built llama.cpp binary. The build is cached in $QUANTCLI_CACHE (default ~/.cache/quantcli).

The other references a test may need — Python packages (torch, transformers, the packed formats' clients,
Ray) and our own C extension — go through `require_module` / `require_native`: on a developer machine
without them the test skips with the reason; under CI (`CI=true`), where `make test` installed all of
them, their absence is a failure, never a silent skip.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def reference_missing(reason: str) -> NoReturn:
    """Skip locally; fail under CI, where every reference the suite uses is installed."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: every reference test must run)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, installed_by: str = "make install-clients") -> ModuleType:
    """Import a reference package (torch, transformers, a packed-format client, ray) or skip/fail."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reference_missing(f"{name} not installed ({installed_by}): {exc}")


def require_native() -> None:
    """The C extension must be loaded: a `native=True` variant must not silently test the NumPy path."""
    from quantcli import native

    if not native.available():
        reference_missing(f"C extension not loaded: {native.problem()}")


def cache_root() -> Path:
    return Path(os.environ.get("QUANTCLI_CACHE") or Path.home() / ".cache" / "quantcli")


# llm-compressor lives in its own venv (`make install-clients`): it pins a transformers other than ours.
LLMCOMPRESSOR_VERSION = "0.14.0.1"


@functools.cache
def llmcompressor_python() -> Path:
    """The interpreter of the llm-compressor venv ($QUANTCLI_CACHE/venv-llmc) with the pinned version."""
    venv = cache_root() / "venv-llmc"
    python = venv / "bin" / "python"
    found = sorted(p.name for p in venv.glob("lib/python*/site-packages/llmcompressor-*.dist-info"))
    if not python.exists() or found != [f"llmcompressor-{LLMCOMPRESSOR_VERSION}.dist-info"]:
        reference_missing(
            f"llmcompressor {LLMCOMPRESSOR_VERSION} not installed in {venv} (make install-clients): found {found}"
        )
    return python


@functools.cache
def llamacpp_root() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_llamacpp.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def llamacpp_src() -> Path:
    return llamacpp_root() / "src"


def convert_with_llamacpp(model_dir: Path, out: Path, outtype: str = "f16") -> subprocess.CompletedProcess[str]:
    """llama.cpp's convert_hf_to_gguf.py MODEL --outtype OUTTYPE --outfile OUT, with the vendored gguf-py
    (not the installed gguf package) on PYTHONPATH. The caller checks the return code."""
    import sys

    src = llamacpp_src()
    return subprocess.run(
        [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype, "--outfile", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(src / "gguf-py")),
    )


@functools.cache
def llamacpp_native_root() -> Path:
    """The benchmarks' second build: -march=native minus AMX (scripts/build_llamacpp.sh native)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_llamacpp.sh"), "native"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _bin_dir(native: bool) -> Path:
    return llamacpp_native_root() / "build-native" / "bin" if native else llamacpp_root() / "build" / "bin"


def tool(name: str, native: bool = False) -> Path:
    """A llama.cpp binary of the portable build (the tests' reference) or, for benchmarks, the native one."""
    path = _bin_dir(native) / name
    assert path.exists(), f"{path} was not built"
    return path


def llama_tokenize_ids(model: Path, text_file: Path) -> list[int]:
    """The token ids llama.cpp's llama-tokenize gives for the text in `text_file` (read as is, no escapes)."""
    import json

    proc = subprocess.run(
        [str(tool("llama-tokenize")), "-m", str(model), "-f", str(text_file), "--ids", "--no-escape", "--log-disable"],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tool_env(native: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    lib = str(_bin_dir(native))
    env["LD_LIBRARY_PATH"] = lib + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    return env


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class Ggml:
    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_void_p,
        ]
        self.lib.ggml_row_size.restype = ctypes.c_size_t
        self.lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        self.lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
        self.lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
        self.lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def quantize(self, qtype: int, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """ggml_quantize_chunk on float32 rows (nrows, ncols) -> uint8 (nrows, row_size)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        nrows, ncols = x.shape
        row = self.lib.ggml_row_size(int(qtype), ncols)
        out = np.zeros((nrows, row), dtype=np.uint8)
        self.lib.ggml_quantize_init(int(qtype))
        im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        n = self.lib.ggml_quantize_chunk(
            int(qtype), x.ctypes.data, out.ctypes.data, 0, nrows, ncols, None if im is None else im.ctypes.data
        )
        assert n == out.size
        return out

    def dequantize(self, qtype: int, data: np.ndarray, nrows: int, ncols: int) -> np.ndarray:
        """The type's to_float (dequantize_row_*) -> float32 (nrows, ncols)."""
        traits = self.lib.ggml_get_type_traits(int(qtype)).contents
        fn = _TO_FLOAT(traits.to_float)
        data = np.ascontiguousarray(data, dtype=np.uint8)
        out = np.zeros((nrows, ncols), dtype=np.float32)
        fn(data.ctypes.data, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), nrows * ncols)
        return out


@functools.cache
def ggml() -> Ggml:
    return Ggml(llamacpp_root() / "build" / "bin" / "libggml-base.so")


def llama_tokenize_ids_no_special(model: Path, text_file: Path) -> list[int]:
    """llama-tokenize's ids with --no-parse-special: control tokens in the text stay text, as in
    llama-perplexity, llama-imatrix and the runtime (llama-tokenize alone parses them by default)."""
    import json

    proc = subprocess.run(
        [
            str(tool("llama-tokenize")), "-m", str(model), "-f", str(text_file), "--ids", "--no-escape",
            "--no-parse-special", "--log-disable",
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_tool(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    """A built llama.cpp binary with its shared libraries on the path; the caller checks the return code.
    Output is decoded with errors="replace": a random model's generated bytes need not be UTF-8."""
    proc = subprocess.run([str(tool(name)), *[str(a) for a in args]], capture_output=True, env=tool_env())
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    )


def perplexity_chunk_values(*args: object, chunk: int) -> list[float]:
    """Run llama-perplexity ARGS; the numbers it prints for chunk `chunk` (1-based): the running PPL in
    perplexity mode (`[2]1924.2964,`), the table row (PPL, ±, ln ratio, ±, KLD, ±, ...) with
    --kl-divergence. llama.cpp's logger is an asynchronous, never-destroyed singleton, so on a loaded
    machine the tail of its output is sometimes lost at exit: the run is repeated (at most 5 times)."""
    log = ""
    for _ in range(5):
        proc = run_tool("llama-perplexity", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        log = proc.stdout + proc.stderr
        m = re.search(rf"\[{chunk}\]([0-9.]+),", log)
        if m:
            return [float(m.group(1))]
        m = re.search(rf"^\s*{chunk}\s+([0-9].*)$", log, re.MULTILINE)
        if m:
            return [float(v) for v in re.findall(r"-?[0-9]+\.[0-9]+", m.group(1))]
    raise AssertionError(f"llama-perplexity printed no line for chunk {chunk}:\n{log[-2000:]}")
