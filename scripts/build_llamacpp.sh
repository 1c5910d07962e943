#!/usr/bin/env bash
# Builds the reference llama.cpp (the tree vendored in the llama-cpp-python sdist) into a cache dir.
# Tests and benchmarks use its libggml-base.so (ctypes) and its tools (llama-quantize, ...).
# Idempotent: does nothing when the build is already there.
set -euo pipefail
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
CACHE="${QUANTCLI_CACHE:-$HOME/.cache/quantcli}"
ROOT="$CACHE/llama.cpp-$VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
TARGETS="llama-quantize llama-perplexity llama-imatrix llama-tokenize llama-simple llama-completion"
if [ -f "$ROOT/.done" ]; then echo "$ROOT"; exit 0; fi
mkdir -p "$ROOT"
if [ ! -f "$SRC/ggml/src/ggml-quants.c" ]; then
  tmp=$(mktemp -d)
  pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
  tar xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
  rm -rf "$SRC"
  mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
  rm -rf "$tmp"
fi
# GGML_NATIVE=OFF: portable AVX2/FMA build without AMX (ggml's AMX matmul crashes on quantized models).
# Quantization kernels live in ggml-base, which is compiled without arch flags either way.
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$BUILD" -j"$(nproc)" --target ggml-base >&2
cmake --build "$BUILD" -j"$(nproc)" --target $TARGETS >&2
touch "$ROOT/.done"
echo "$ROOT"
