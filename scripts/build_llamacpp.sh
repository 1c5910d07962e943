#!/usr/bin/env bash
# Builds the reference llama.cpp (the tree vendored in the llama-cpp-python sdist) into a cache dir.
# Tests and benchmarks use its libggml-base.so (ctypes) and its tools (llama-quantize, ...).
# Idempotent: does nothing when the build is already there.
#
# `build_llamacpp.sh native` builds a second copy, build-native/, for the speed benchmarks only: compiled for
# this CPU (-march=native: AVX-512 where the CPU has it) minus AMX, the build a user running llama.cpp here
# would have. The portable build stays the tests' reference (its results do not depend on the machine).
set -euo pipefail
VARIANT="${1:-portable}"
VERSION="${LLAMACPP_PY_VERSION:-0.3.36}"
CACHE="${QUANTCLI_CACHE:-$HOME/.cache/quantcli}"
ROOT="$CACHE/llama.cpp-$VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
TARGETS="llama-quantize llama-perplexity llama-imatrix llama-tokenize llama-simple llama-completion"
DONE="$ROOT/.done"
if [ "$VARIANT" = native ]; then
  BUILD="$ROOT/build-native"
  TARGETS="llama-quantize llama-perplexity"
  DONE="$ROOT/.done-native"
elif [ "$VARIANT" != portable ]; then
  echo "usage: build_llamacpp.sh [portable|native]" >&2; exit 2
fi
if [ -f "$DONE" ]; then echo "$ROOT"; exit 0; fi
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
# The native variant keeps -march=native and takes AMX away with -mno-amx-* (GCC lets an explicit -mno-*
# win over what -march implies). Quantization kernels live in ggml-base, which is compiled without arch
# flags either way.
ARCH=(-DGGML_NATIVE=OFF)
if [ "$VARIANT" = native ]; then
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  ARCH=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX")
fi
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON "${ARCH[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$BUILD" -j"$(nproc)" --target ggml-base >&2
cmake --build "$BUILD" -j"$(nproc)" --target $TARGETS >&2
touch "$DONE"
echo "$ROOT"
