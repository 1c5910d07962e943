"""Byte-exactness of the 32-block / ternary / IQ4 / MXFP4 quantizers against the real ggml.

Every case quantizes the same float32 rows with `ggml_quantize_chunk` (tests/reference.py) and with
quantcli, and requires zero differing bytes; dequantization must equal ggml's to_float bit for bit.
Each case runs on both engines (ENGINES): NumPy and the C extension, whose absence fails under CI.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from reference import require_native

from quantcli import quants
from quantcli.errors import InputInvalid
from quantcli.quants.ggml import IQ4NL_MIDPOINTS as _MIDPOINTS
from quantcli.quants.ggml import best_index_iq4, best_index_iq4_literal
from quantcli.quants.mxfp4 import floor_log2f
from quantcli.quants.q8_0 import roundf_to_int8

F32 = np.float32

TYPES_32 = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.IQ4_NL, T.MXFP4]
TYPES_256 = [T.IQ4_XS, T.TQ1_0, T.TQ2_0]
ALL_TYPES = TYPES_32 + TYPES_256
IMATRIX_IGNORED = {T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4}

# use_native values to test: NumPy and the C extension (quantcli.native), which must be loaded under CI.
ENGINES = [False, True]

# Offsets of the fp16 fields of each block (randomised dequantization inputs must keep them finite).
HALF_FIELDS = {
    T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.IQ4_NL: [0],
    T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [],
}


def ours(qtype: T, x: np.ndarray, imatrix: np.ndarray | None, use_native: bool) -> np.ndarray:
    return quants.quantize(x, qtype, imatrix, use_native=use_native)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (RNE) and back: creates many exact ties for the rounding steps."""
    bits = x.astype(F32).view(np.uint32)
    bits = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    return bits.view(F32)


def special_row(ncols: int, rng: np.random.Generator) -> np.ndarray:
    """A row cycling through degenerate 32-blocks: zero, constant +/-, 1e-20, true subnormals, signed
    zeros, a lone value, ±a ties, then Gaussian filler."""
    row = rng.standard_normal(ncols).astype(F32)
    patterns = [
        np.zeros(32, F32),
        np.full(32, 0.37, F32),
        np.full(32, -0.37, F32),
        np.full(32, 1e-20, F32),
        np.full(32, -1e-20, F32),
        np.where(np.arange(32) % 2 == 0, F32(1e-40), F32(-3e-41)).astype(F32),
        np.where(np.arange(32) % 3 == 0, F32(-0.0), F32(0.0)).astype(F32),
        np.full(32, -0.0, F32),
        np.eye(1, 32, 7, dtype=F32)[0] * F32(-2.5),
        np.where(np.arange(32) % 2 == 0, F32(0.75), F32(-0.75)).astype(F32),
        np.concatenate([np.full(16, -1.0, F32), np.full(16, 1.0, F32)]),
        rng.integers(-8, 9, 32).astype(F32) / F32(4),
    ]
    for i in range(0, ncols // 32):
        row[32 * i : 32 * i + 32] = patterns[i % len(patterns)]
    return row


def make_rows(ncols: int, seed: int) -> np.ndarray:
    """Rows of every kind at scales 1e-3..5: Gaussian, Student-t(3), bf16-rounded, outliers, special."""
    rng = np.random.default_rng(seed)
    rows = []
    for scale in (1e-3, 0.02, 0.3, 5.0):
        rows.append(rng.standard_normal(ncols) * scale)
        rows.append(rng.standard_t(3, ncols) * scale)
        rows.append(bf16_round((rng.standard_normal(ncols) * scale).astype(F32)))
        rows.append(bf16_round((rng.standard_t(2, ncols) * scale).astype(F32)))
    outlier = rng.standard_normal(ncols) * 0.05
    outlier[rng.integers(0, ncols, 3)] = [80.0, -120.0, 300.0]
    rows.append(outlier)
    rows.append(rng.standard_normal(ncols) * np.exp(rng.uniform(-6, 3, ncols)))  # wild per-column scales
    rows.append(special_row(ncols, rng))
    rows.append(bf16_round(special_row(ncols, rng) * F32(3.0)))
    rows.append(np.zeros(ncols))
    rows.append(np.full(ncols, -0.001))
    # a row of true subnormals: scales whose float32 inverse overflows to inf (C casts of inf/NaN)
    rows.append(rng.choice(np.array([1e-40, -3e-41, 0.0, 7e-42], dtype=F32), ncols))
    return np.asarray(rows, dtype=F32)


def make_imatrix(ncols: int, seed: int) -> np.ndarray:
    """Random positive importance with a wide dynamic range (e^-9 .. e^9), plus a few exact zeros
    (columns an imatrix run never activated)."""
    rng = np.random.default_rng(seed + 1000)
    im = np.exp(rng.uniform(-9, 9, ncols)).astype(F32)
    im[rng.random(ncols) < 0.03] = 0.0
    im[:32] = 0.0  # one whole all-zero-weight block
    return im



CASES = [(qt, n) for qt in TYPES_32 for n in (256, 576, 1024, 4096)] + [
    (qt, n) for qt in TYPES_256 for n in (256, 1024, 4096)
]


def check_against_ggml(ggml, qtype: T, x: np.ndarray, imatrix: np.ndarray | None, use_native: bool) -> None:
    expected = ggml.quantize(int(qtype), x, imatrix)
    got = ours(qtype, x, imatrix, use_native)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.argwhere(got != expected)
    assert diff.size == 0, (
        f"{qtype.name} imatrix={imatrix is not None}: {len(diff)} bytes differ, first at (row, byte) {diff[:3].tolist()}"
    )
    ref_values = ggml.dequantize(int(qtype), expected, *x.shape)
    our_values = quants.dequantize(expected, qtype, x.shape)
    assert our_values.dtype == np.float32
    np.testing.assert_array_equal(our_values.view(np.uint32), ref_values.view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("use_native", ENGINES)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize(("qtype", "ncols"), CASES, ids=[f"{q.name}-{n}" for q, n in CASES])
def test_bytes_equal_ggml(ggml, qtype: T, ncols: int, with_imatrix: bool, use_native: bool) -> None:
    if use_native:
        require_native()
    x = make_rows(ncols, seed=ncols + int(qtype))
    imatrix = make_imatrix(ncols, int(qtype)) if with_imatrix else None
    check_against_ggml(ggml, qtype, x, imatrix, use_native)


@pytest.mark.slow
@pytest.mark.parametrize("use_native", ENGINES)
@pytest.mark.parametrize("seed", range(6))
def test_random_matrices_all_types(ggml, seed: int, use_native: bool) -> None:
    """Extra random shapes and distributions (heavy tails with random dof, bf16 grids, huge imatrix range)."""
    if use_native:
        require_native()
    rng = np.random.default_rng(100 + seed)
    ncols = int(rng.choice([512, 768, 1536, 2048]))
    if seed % 2:
        dof = rng.uniform(1.5, 6)
        x = rng.standard_t(dof, (24, ncols)) * np.exp(rng.uniform(-8, 3, (24, 1)))
    else:
        x = bf16_round((rng.standard_normal((24, ncols)) * rng.uniform(1e-3, 5)).astype(F32))
    x = x.astype(F32)
    im = np.exp(rng.uniform(-12, 12, ncols)).astype(F32)
    for qtype in ALL_TYPES:
        for imatrix in (None, im):
            check_against_ggml(ggml, qtype, x, imatrix, use_native)


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_dequantize_random_blocks(ggml, qtype: T) -> None:
    """Every code value and scale pattern (not only those our quantizer emits) decodes like to_float."""
    cls = quants.get(qtype)
    rng = np.random.default_rng(int(qtype))
    nrows, ncols = 64, 1024
    data = rng.integers(0, 256, (nrows * ncols // cls.block_size, cls.type_size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:  # finite fp16 scales (NaN payloads are not part of the contract)
        halves = (rng.standard_normal(data.shape[0]) * np.exp(rng.uniform(-12, 8, data.shape[0])))
        data[:, offset : offset + 2] = halves.astype("<f2").view(np.uint8).reshape(-1, 2)
    data = data.reshape(nrows, -1)
    expected = ggml.dequantize(int(qtype), data, nrows, ncols)
    got = quants.dequantize(data, qtype, (nrows, ncols))
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize("qtype", sorted(IMATRIX_IGNORED, key=int), ids=lambda q: q.name)
def test_imatrix_is_ignored(ggml, qtype: T) -> None:
    assert quants.get(qtype).uses_imatrix is False
    x = make_rows(256, seed=7)
    im = make_imatrix(256, 7)
    plain = ours(qtype, x, None, False)
    np.testing.assert_array_equal(ours(qtype, x, im, False), plain)
    np.testing.assert_array_equal(ggml.quantize(int(qtype), x, im), plain)


def test_imatrix_flags() -> None:
    for qtype in ALL_TYPES:
        assert quants.get(qtype).uses_imatrix is (qtype not in IMATRIX_IGNORED), qtype.name


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_input_is_refused(qtype: T, bad: float) -> None:
    x = np.ones((3, 512), dtype=F32)
    x[2, 300] = bad
    with pytest.raises(InputInvalid, match=r"blk\.3\.ffn_up\.weight.*row 2, column 300"):
        quants.quantize(x, qtype, name="blk.3.ffn_up.weight", use_native=False)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_row_length_not_multiple_of_block(qtype: T) -> None:
    block = quants.get(qtype).block_size
    x = np.ones((2, block + 16), dtype=F32)
    with pytest.raises(InputInvalid, match=rf"output\.weight.*{block + 16}.*{qtype.name}.*{block}"):
        quants.quantize(x, qtype, name="output.weight", use_native=False)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
def test_round_trip_shapes_and_error(qtype: T) -> None:
    """Sanity independent of ggml: 3-D input keeps its shape and the reconstruction is close."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 512)).astype(F32)
    q = quants.quantize(x, qtype, use_native=False)
    assert q.shape == (2, 3, quants.get(qtype).row_bytes(512))
    y = quants.dequantize(q, qtype, x.shape)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    bound = {T.Q8_0: 0.01, T.TQ1_0: 0.9, T.TQ2_0: 0.9}.get(qtype, 0.2)
    assert rel < bound, f"{qtype.name}: relative RMS error {rel:.3f}"


def _libm_log2f():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    fn = libm.log2f
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float]
    return fn


def test_floor_log2f_matches_libm_near_every_power_of_two() -> None:
    """MXFP4's exponent uses floorf(log2f(amax)); glibc's log2f rounds up to the next integer just below
    powers of two. Check the 96 floats below and 4 above every power of two (normal and subnormal),
    plus random floats, against the C library itself."""
    log2f = _libm_log2f()
    powers = np.ldexp(F32(1.0), np.arange(-149, 128)).astype(F32)
    values = [powers]
    below, above = powers.copy(), powers.copy()
    for _ in range(96):
        below = np.nextafter(below, F32(0.0))
        values.append(below)
    for _ in range(4):
        above = np.nextafter(above, F32(np.inf))
        values.append(above)
    rng = np.random.default_rng(0)
    values.append(rng.integers(1, 0x7F800000, 20000, dtype=np.uint32).view(F32))
    a = np.concatenate(values)
    a = a[(a > 0) & np.isfinite(a)]
    expected = np.array([np.floor(F32(log2f(float(v)))) for v in a], dtype=F32)
    got = floor_log2f(a)
    bad = np.nonzero(got != expected)[0]
    assert bad.size == 0, [(float(a[i]), float(got[i]), float(expected[i])) for i in bad[:5]]
    # the round-up really happens (otherwise this test would not distinguish frexp from log2f)
    assert floor_log2f(np.array([np.nextafter(F32(8.0), F32(0.0))]))[0] == 3.0


@pytest.mark.slow
def test_mxfp4_block_max_just_below_powers_of_two(ggml) -> None:
    """Blocks whose |x| max is 1..40 ulps below 2^k: log2f rounds up to k there, so the E8M0 exponent
    differs from the frexp one (and 1 ulp above, where it does not)."""
    rng = np.random.default_rng(11)
    exponents = np.arange(-30, 31)
    rows = []
    for k in exponents:
        top = np.ldexp(F32(1.0), int(k)).astype(F32)
        block_max = [top, np.nextafter(top, F32(np.inf))]
        below = top
        for _ in range(40):
            below = np.nextafter(below, F32(0.0))
            block_max.append(below)
        row = (rng.uniform(-1, 1, (len(block_max), 32)) * top * F32(0.9)).astype(F32)
        row[:, 5] = np.array(block_max, dtype=F32) * np.where(rng.random(len(block_max)) < 0.5, -1, 1)
        rows.append(row.reshape(-1))
    x = np.asarray(rows, dtype=F32)
    check_against_ggml(ggml, T.MXFP4, x, None, use_native=False)


def test_iq4_midpoint_index_equals_c_binary_search() -> None:
    """The midpoint-count table lookup equals a literal port of best_index_int8 on every float within
    256 ulps of each midpoint and table value, plus wide random values (incl. beyond the table)."""
    anchors = np.concatenate([_MIDPOINTS, np.array([-127, -104, 1, 113], dtype=F32)])
    values = [anchors]
    up, down = anchors.copy(), anchors.copy()
    for _ in range(256):
        up, down = np.nextafter(up, F32(np.inf)), np.nextafter(down, F32(-np.inf))
        values += [up, down]
    rng = np.random.default_rng(5)
    values.append((rng.standard_normal(200_000) * 80).astype(F32))
    values.append(np.array([0.0, -0.0, 1e-30, -1e30, 1e30], dtype=F32))
    x = np.concatenate(values)
    np.testing.assert_array_equal(best_index_iq4(x), best_index_iq4_literal(x))


def test_roundf_to_int8_is_c_roundf() -> None:
    """Every float within 4 ulps of each integer and half-integer in [-127.5, 127.5], both signs."""
    base = np.concatenate([np.arange(0, 128, dtype=F32), np.arange(0, 128, dtype=F32) + F32(0.5)])
    values = [base]
    up, down = base.copy(), base.copy()
    for _ in range(4):
        up, down = np.nextafter(up, F32(200)), np.nextafter(down, F32(-200))
        values += [up, down]
    v = np.concatenate(values + [np.array([0.49999997, 0.25, 0.24999999], dtype=F32)])
    v = v[np.abs(v) <= 127.5]
    v = np.concatenate([v, -v])
    half_away = np.copysign(np.floor(np.abs(v.astype(np.float64)) + 0.5), v)  # exact in float64
    np.testing.assert_array_equal(roundf_to_int8(v.copy()), half_away.astype(np.int8))


@pytest.mark.slow
def test_smollm2_tensors(ggml, smollm2_dir) -> None:
    """Real BF16 weights (many ties, real outliers): a slice of three SmolLM2 tensors, every type."""
    from quantcli.loaders.safetensors import SafetensorsFile

    st = SafetensorsFile(smollm2_dir / "model.safetensors")
    try:
        picks = {
            "model.layers.0.self_attn.q_proj.weight": 48,
            "model.layers.5.mlp.down_proj.weight": 24,
            "model.layers.29.mlp.gate_proj.weight": 48,
        }
        for name, nrows in picks.items():
            x = np.asarray(st.read(name)[:nrows], dtype=F32)
            ncols = x.shape[1]
            im = make_imatrix(ncols, len(name))
            for qtype in ALL_TYPES:
                if ncols % quants.get(qtype).block_size:
                    continue
                for imatrix in (None, im):
                    check_against_ggml(ggml, qtype, x, imatrix, use_native=False)
    finally:
        st.close()


def test_quiet_bf16_nans_is_the_float32_round_trip() -> None:
    """Every BF16 bit pattern: copying the bits and quieting NaNs equals widening to float32 and rounding back
    (ggml's and gguf-py's rule); without such a NaN the input comes back uncopied."""
    from quantcli.quants.floats import bf16_bits_to_f32, f32_to_bf16_bits, quiet_bf16_nans

    every = np.tile(np.arange(1 << 16, dtype=np.uint16), 3)  # more than one scan piece
    assert np.array_equal(quiet_bf16_nans(every), f32_to_bf16_bits(bf16_bits_to_f32(every)))
    ordinary = np.array([0x0000, 0x8000, 0x0001, 0x7F80, 0xFF80, 0x7FC0, 0x3F80], dtype=np.uint16)
    assert quiet_bf16_nans(ordinary) is ordinary
