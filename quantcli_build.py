"""Build description of quantcli's optional C quantizer library (imported by setup.py).

The library is a plain C shared object loaded with ctypes (quantcli/native/__init__.py). It is declared as a
setuptools `Extension(optional=True)`: without a working compiler the build prints a warning and the install
carries on; quantcli then runs on NumPy. Flags keep IEEE binary32 semantics identical to ggml's reference build:
no -ffast-math, no FMA contraction (-ffp-contract=off), so every float op happens in source order.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

from setuptools import Extension

NATIVE_DIR = Path("quantcli") / "native"
SOURCES = [str(NATIVE_DIR / "quants.c")]

CFLAGS = [
    "-std=gnu11",
    "-O3",
    "-fno-fast-math",
    "-ffp-contract=off",  # never fuse a*b+c into an FMA: ggml-base is built without FMA
    "-fno-finite-math-only",
    "-fvisibility=hidden",
    "-pthread",
    "-Wno-psabi",
    "-fno-wrapv",  # Python's CFLAGS add -fwrapv, which blocks loop optimisations ggml gets
    "-DNDEBUG",
]


def source_hash(directory: Path) -> str:
    """Hash of the C sources; compiled into the library so a stale build is detected at load time."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.[ch]")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def native_extensions() -> list[Extension]:
    if sys.platform == "win32":  # pthreads and GCC/Clang flags; Windows users get the NumPy path
        return []
    cflags = list(CFLAGS)
    if platform.machine().lower() in ("i386", "i686", "x86"):
        cflags += ["-msse2", "-mfpmath=sse"]  # x87 excess precision would change results
    root = Path(__file__).resolve().parent
    return [
        Extension(
            "quantcli.native._quants",
            sources=SOURCES,
            depends=[str(NATIVE_DIR / "quants_simd.h")],
            define_macros=[("QC_SOURCE_HASH", f'"{source_hash(root / NATIVE_DIR)}"')],
            extra_compile_args=cflags,
            extra_link_args=["-pthread"],
            libraries=["m"],
            optional=True,
        )
    ]
