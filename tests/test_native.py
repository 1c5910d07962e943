"""The optional C quantizers (quantcli/native) against the real ggml and against our NumPy path.

Every native type, with and without an importance matrix (ggml's `_ref` and `_impl` paths), must give
zero differing bytes versus `ggml_quantize_chunk` on Gaussian, heavy-tailed, outlier, degenerate (all-zero,
constant, tiny, subnormal), BF16-rounded and coarse-grid data, at row lengths 256..4096; the thread
count must not change a byte; and `quantcli.quants.quantize` must give the same bytes with the C path on
and off.
"""

from __future__ import annotations

import shutil

import ml_dtypes
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from quant_checks import assert_same_bytes, make_imatrix
from reference import reference_missing, require_native

from quantcli import native
from quantcli.quants import native_enabled, quantize

T = GGMLQuantizationType
NATIVE_TYPES = sorted(native.NATIVE_TYPES, key=int)
# ggml's quantizer reads the imatrix for these (Q8_0, TQ1_0, TQ2_0, MXFP4 ignore it)
USES_IMATRIX = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS}



@pytest.fixture
def native_loaded() -> None:
    require_native()


needs_native = pytest.mark.usefixtures("native_loaded")


def _bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def make_rows(ncols: int, seed: int) -> np.ndarray:
    """One matrix holding every kind of row/block the quantizers branch on (rows are independent)."""
    rng = np.random.default_rng(seed)

    def gauss(scale: float) -> np.ndarray:
        return (rng.standard_normal(ncols) * scale).astype(np.float32)

    rows = [gauss(s) for s in (1e-3, 0.02, 1.0, 7.0)]
    rows += [(rng.standard_t(df, ncols) * 0.02).astype(np.float32) for df in (1.5, 3.0)]
    r = gauss(0.02)
    hits = rng.choice(ncols, size=max(2, ncols // 50), replace=False)
    r[hits] *= rng.choice([-90.0, 70.0, 250.0], size=hits.size).astype(np.float32)
    rows.append(r)
    rows.append(np.abs(gauss(0.3)) + np.float32(0.01))
    rows.append(-np.abs(gauss(0.3)) - np.float32(0.5))
    # degenerate 16/32-element blocks at shifting positions inside ordinary rows
    for variant in range(3):
        r = gauss(0.05)
        for start in range(0, ncols, 16):
            sub = slice(start, start + 16)
            kind = (start // 16 + variant) % 8
            if kind == 0:
                r[sub] = 0.0
            elif kind == 1:
                r[sub] = np.float32(0.75)
            elif kind == 2:
                r[sub] = np.float32(-1.25)
            elif kind == 3:
                r[sub] = (rng.standard_normal(16) * 1e-40).astype(np.float32)  # subnormals
            elif kind == 4:
                r[sub] = (rng.standard_normal(16) * 1e-20).astype(np.float32)
            elif kind == 5:
                r[sub] = 0.0
                r[start + int(rng.integers(16))] = np.float32(rng.choice([-2.0, 0.4]))
        rows.append(r)
    rows.append(np.zeros(ncols, np.float32))
    rows.append(np.full(ncols, -0.5, np.float32))
    rows.append(np.full(ncols, 1e-41, np.float32))
    r = gauss(0.02)
    r[: min(256, ncols)] = 0.0
    rows.append(r)
    rows += [_bf16(gauss(s)) for s in (0.02, 1.0)]
    rows.append(_bf16(rng.standard_t(2.0, ncols).astype(np.float32)))
    rows.append((rng.integers(-8, 8, ncols) * 0.25).astype(np.float32))
    rows.append((rng.integers(0, 4, ncols) * 0.5).astype(np.float32))
    return np.stack(rows).astype(np.float32)


def test_native_off_by_env(monkeypatch):
    monkeypatch.setenv("QUANTCLI_NATIVE", "0")
    assert native_enabled() is False
    monkeypatch.setenv("QUANTCLI_NATIVE", "1")
    assert native_enabled() is native.available()


def test_library_built_where_a_compiler_exists():
    """`make install` builds the library whenever a C compiler is present; a stale build is refused."""
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        reference_missing("no C compiler on this machine: NumPy only")
    assert native.available(), native.problem()


@needs_native
def test_unsupported_type_returns_none():
    x = np.ones((2, 64), np.float32)
    assert native.quantize_rows(T.F16, x, None, 1) is None
    assert native.quantize_rows(T.IQ2_XXS, np.ones((1, 256), np.float32), None, 1) is None


@needs_native
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_f16_and_bf16_rows_give_the_bytes_of_their_float32_values(qtype):
    """The C code widens F16/BF16 rows itself (F16C or ggml's routine): exact, so the float32 bytes."""
    rng = np.random.default_rng(7)
    x16 = (rng.standard_normal((24, 512)) * 0.05).astype(np.float16)
    x16[0] = np.arange(512, dtype=np.uint16).view(np.float16)  # zeros, F16 subnormals, smallest normals
    x16[1, ::7] = np.float16(65504.0)
    bf16_bits = (rng.standard_normal((24, 512)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    im = make_imatrix(512, 5, zeros=False) if qtype in USES_IMATRIX else None
    for threads in (1, 3):
        want = native.quantize_rows(qtype, x16.astype(np.float32), im, threads)
        assert_same_bytes(native.quantize_rows(qtype, x16, im, threads), want, qtype, f"f16, {threads} threads")
        wide = (bf16_bits.astype(np.uint32) << 16).view(np.float32)
        got = native.quantize_rows(qtype, bf16_bits, im, threads, bf16=True)
        assert_same_bytes(got, native.quantize_rows(qtype, wide, im, threads), qtype, f"bf16, {threads} threads")


@needs_native
def test_non_finite_rows_are_refused():
    for dtype, bad in ((np.float32, np.nan), (np.float32, -np.inf), (np.float16, np.inf), (np.float16, np.nan)):
        x = np.ones((5, 64), dtype)
        x[3, 40] = bad
        with pytest.raises(native.NonFinite):
            native.quantize_rows(T.Q8_0, x, None, 2)
    bits = np.full((2, 32), 0x3F80, np.uint16)  # BF16 1.0
    bits[1, 5] = 0x7FC0  # BF16 NaN
    with pytest.raises(native.NonFinite):
        native.quantize_rows(T.Q4_0, bits, None, 1, bf16=True)
    x = np.ones((300, 256), np.float16)
    x[257, 9] = np.inf
    with pytest.raises(Exception, match=r"w: non-finite value at row 257, column 9"):
        quantize(x, T.Q4_K, name="w", use_native=True)


@needs_native
def test_bad_row_length_raises():
    with pytest.raises(ValueError):
        native.quantize_rows(T.Q4_K, np.ones((1, 96), np.float32), None, 1)


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("imatrix_kind", ["none", "positive", "with_zeros"])
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_matches_ggml(ggml, qtype, imatrix_kind):
    for ncols in (256, 768, 1024, 4096):  # 768: an odd number of super-blocks (unpaired last one)
        x = make_rows(ncols, seed=ncols + int(qtype))
        im = None if imatrix_kind == "none" else make_imatrix(ncols, ncols, imatrix_kind == "with_zeros")
        ref = ggml.quantize(int(qtype), x, im)
        assert_same_bytes(
            native.quantize_rows(qtype, x, im, 1), ref, qtype, f"{ncols} cols, imatrix {imatrix_kind}"
        )


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize(
    "qtype", [t for t in NATIVE_TYPES if GGML_QUANT_SIZES[t][0] == 32], ids=lambda t: t.name
)
def test_32_block_types_odd_block_counts(ggml, qtype):
    """Rows whose block count is not a multiple of 8 exercise the scalar tail after the lane-parallel groups."""
    for ncols in (32, 288, 736):
        x = make_rows(ncols, seed=ncols)
        for im in (None, make_imatrix(ncols, 7, zeros=True)):
            assert_same_bytes(
                native.quantize_rows(qtype, x, im, 1), ggml.quantize(int(qtype), x, im), qtype, str(ncols)
            )


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_realistic_tensor_and_threads(ggml, qtype):
    """A (512, 2048) weight-like tensor: ggml's bytes, and the same bytes with 1, 2 and 3 threads."""
    rng = np.random.default_rng(int(qtype))
    x = _bf16(rng.standard_normal((512, 2048)).astype(np.float32) * np.float32(0.02))
    x[rng.random(x.shape) < 1e-3] *= np.float32(40.0)
    im = make_imatrix(2048, 3, zeros=False) if qtype in USES_IMATRIX else None
    one = native.quantize_rows(qtype, x, im, 1)
    assert_same_bytes(one, ggml.quantize(int(qtype), x, im), qtype, "512x2048")
    assert_same_bytes(native.quantize_rows(qtype, x, im, 2), one, qtype, "threads=2 vs 1")
    assert_same_bytes(native.quantize_rows(qtype, x, im, 3), one, qtype, "threads=3 vs 1")


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_numpy_and_native_agree(qtype, with_imatrix):
    """quantcli.quants.quantize gives the same bytes through NumPy and through C (small: NumPy is slow)."""
    x = make_rows(512, seed=99)
    im = make_imatrix(512, 5, zeros=True) if with_imatrix else None
    c = quantize(x, qtype, im, use_native=True, threads=2)
    py = quantize(x, qtype, im, use_native=False)
    assert_same_bytes(c, py, qtype, "native vs numpy")


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("qtype", [T.Q4_K, T.IQ4_XS, T.Q5_0], ids=lambda t: t.name)
def test_expert_tensor_imatrix_slices(ggml, qtype):
    """3-D expert tensor through quantize(): expert e uses imatrix[e*ncols:(e+1)*ncols] (spec 3.3)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 8, 512)).astype(np.float32)
    im = make_imatrix(3 * 512, 2, zeros=False)
    out = quantize(x, qtype, im, use_native=True)
    for e in range(3):
        ref = ggml.quantize(int(qtype), x[e], im[e * 512 : (e + 1) * 512])
        assert_same_bytes(out[e], ref, qtype, f"expert {e}")


@pytest.mark.slow
@needs_native
@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=lambda t: t.name)
def test_dequantize_matches_ggml(ggml, qtype):
    """C to_float == ggml's bit for bit, on real quantized data and on random bytes (every code and scale)."""
    rng = np.random.default_rng(int(qtype) + 100)
    x = make_rows(1024, seed=5)
    q = ggml.quantize(int(qtype), x, None)
    noise = rng.integers(0, 256, q.shape, dtype=np.uint8)
    for what, data in (("quantized", q), ("random bytes", noise)):
        ref = ggml.dequantize(int(qtype), data, *x.shape)
        for threads in (1, 2):
            out = native.dequantize_rows(qtype, data, x.shape[1], threads)
            assert out.shape == ref.shape
            assert np.array_equal(out.view(np.uint32), ref.view(np.uint32)), (
                f"{qtype.name} {what} threads={threads}"
            )


@needs_native
def test_f16_to_float_is_exact(ggml):
    """F16 weights widen in C (F16C where the CPU has it): every one of the 65536 bit patterns as NumPy's cast
    and ggml's to_float give it (NaNs compared as NaNs), with 1 and 2 threads; F16 has no C quantizer."""
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    expected = bits.view(np.float16).astype(np.float32)
    ref = ggml.dequantize(int(T.F16), bits.view(np.uint8), 256, 256)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(ref), nan)
    assert np.array_equal(ref[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    for threads in (1, 2):
        out = native.dequantize_rows(T.F16, bits.view(np.uint8), 256, threads)
        assert np.array_equal(np.isnan(out), nan)
        assert np.array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32)), threads
    assert native.quantize_rows(T.F16, expected[:1], None, 1) is None
