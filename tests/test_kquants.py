"""K-quants (Q2_K..Q6_K) against the real ggml: zero differing bytes, dequantization equal bit for bit.

Quantization goes through `quantcli.quants.quantize(..., use_native=...)` and is compared with
`ggml_quantize_chunk` (tests/reference.py), with and without an importance matrix (the `_ref` and `_impl`
paths). Data: Gaussian at scales 1e-3..5, heavy-tailed Student-t, outlier rows, degenerate sub-blocks
(all-zero, constant +/-, 1e-20, float32 subnormals), BF16-rounded values and coarse grids (exact ties),
rows of 256, 1024 and 4096 elements; plus real SmolLM2 ffn_down rows.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from quant_checks import assert_same_bytes, make_imatrix
from reference import require_native

from quantcli.quants import dequantize, get, quantize

pytestmark = pytest.mark.slow

KQUANTS = [
    GGMLQuantizationType.Q2_K,
    GGMLQuantizationType.Q3_K,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
]
# Which implementation quantize() runs: the NumPy path. When the C extension is in, add True here.
NATIVE = [False, True]
ROW_LENGTHS = [256, 1024, 4096]


def _bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def make_rows(ncols: int, seed: int) -> np.ndarray:
    """A matrix mixing every kind of row the quantizers branch on (each row independent)."""
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []

    def gauss(scale: float) -> np.ndarray:
        return (rng.standard_normal(ncols) * scale).astype(np.float32)

    for scale in (1e-3, 1e-2, 0.05, 1.0, 5.0):
        rows.append(gauss(scale))
    for df in (1.5, 3.0):  # heavy tails: a few huge values per block
        rows.append((rng.standard_t(df, ncols) * 0.02).astype(np.float32))
    # outliers inside otherwise ordinary rows, and a whole outlier row
    r = gauss(0.02)
    hits = rng.choice(ncols, size=max(2, ncols // 64), replace=False)
    r[hits] *= rng.choice([-80.0, 60.0, 200.0], size=hits.size).astype(np.float32)
    rows.append(r)
    rows.append(gauss(0.02) * np.float32(300.0))
    # all-positive and all-negative rows (min clamp / sign branches)
    rows.append(np.abs(gauss(0.3)) + np.float32(0.01))
    rows.append(-np.abs(gauss(0.3)) - np.float32(0.5))
    # degenerate sub-blocks at varying positions (16- and 32-element granularity, whole super-blocks)
    for variant in range(4):
        r = gauss(0.05)
        for start in range(0, ncols, 32):
            kind = (start // 32 + variant) % 9
            sub = slice(start, start + 32)
            half = slice(start + 16 * (variant % 2), start + 16 * (variant % 2) + 16)
            if kind == 0:
                r[sub] = 0.0
            elif kind == 1:
                r[sub] = np.float32(0.75)
            elif kind == 2:
                r[sub] = np.float32(-1.25)
            elif kind == 3:
                r[sub] = (rng.standard_normal(32) * 1e-20).astype(np.float32)
            elif kind == 4:
                r[half] = 0.0
            elif kind == 5:
                r[half] = np.float32(-3.0)
            elif kind == 6:
                r[sub] = (rng.standard_normal(32) * 1e-40).astype(np.float32)  # float32 subnormals
            elif kind == 7:
                r[sub] = 0.0
                r[start + int(rng.integers(32))] = np.float32(rng.choice([-2.0, 0.4]))
        rows.append(r)
    rows.append(np.zeros(ncols, np.float32))
    rows.append(np.full(ncols, 0.5, np.float32))
    rows.append(np.full(ncols, -0.5, np.float32))
    row = gauss(0.02)
    row[: min(256, ncols)] = 0.0  # one whole zero super-block in an ordinary row
    rows.append(row)
    # exact ties for nearest_int: bf16-rounded data and coarse grids
    for scale in (0.02, 1.0):
        rows.append(_bf16(gauss(scale)))
    rows.append(_bf16(rng.standard_t(2.0, ncols).astype(np.float32)))
    rows.append((rng.integers(-8, 8, ncols) * 0.25).astype(np.float32))
    rows.append((rng.integers(0, 4, ncols) * 0.5).astype(np.float32))
    rows.append((rng.integers(-32, 32, ncols) * 0.125).astype(np.float32))
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("ncols", ROW_LENGTHS)
@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("imatrix_kind", ["none", "positive", "with_zeros"])
def test_quantize_matches_ggml(ggml, qtype, ncols, native, imatrix_kind):
    if native:
        require_native()
    x = make_rows(ncols, seed=ncols + int(qtype))
    im = None if imatrix_kind == "none" else make_imatrix(ncols, seed=7 * ncols, zeros=imatrix_kind == "with_zeros")
    ours = quantize(x, qtype, im, use_native=native)
    ref = ggml.quantize(int(qtype), x, im)
    assert_same_bytes(ours, ref, qtype, f"ncols={ncols} imatrix={imatrix_kind}")
    # dequantize: same floats, bit for bit, as the type's to_float
    ours_f = dequantize(ours, qtype, x.shape)
    ref_f = ggml.dequantize(int(qtype), ref, *x.shape)
    np.testing.assert_array_equal(ours_f.view(np.uint32), ref_f.view(np.uint32))


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["all_zero", "sparse", "tiny", "huge", "signed"])
def test_degenerate_imatrix(ggml, qtype, native, kind):
    """Importance matrices real files can hold (unused columns, extreme ranges) and one that is invalid
    (negative values, which ggml does not reject): same bytes as ggml, no NaN leaking into the decisions."""
    if native:
        require_native()
    rng = np.random.default_rng(21)
    im = {
        "all_zero": np.zeros(1024),
        "sparse": np.where(rng.random(1024) < 0.05, 1.0, 0.0),
        "tiny": np.full(1024, 1e-30),
        "huge": np.exp(rng.uniform(60.0, 68.0, 1024)),
        "signed": rng.standard_normal(1024),
    }[kind].astype(np.float32)
    x = make_rows(1024, seed=23)
    with np.errstate(all="ignore"):
        ours = quantize(x, qtype, im, use_native=native)
    assert_same_bytes(ours, ggml.quantize(int(qtype), x, im), qtype, f"imatrix {kind}")


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_imatrix_changes_result(ggml, qtype, native):
    """The imatrix path really is a different algorithm (guards against silently ignoring it)."""
    if native:
        require_native()
    x = make_rows(1024, seed=3)[:8]
    im = make_imatrix(1024, seed=4)
    plain = quantize(x, qtype, None, use_native=native)
    weighted = quantize(x, qtype, im, use_native=native)
    assert not np.array_equal(plain, weighted)
    assert_same_bytes(weighted, ggml.quantize(int(qtype), x, im), qtype, "imatrix")


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_dequantize_arbitrary_blocks(ggml, qtype):
    """Random block bytes (every code combination, wrapped scale codes) decode exactly like ggml."""
    rng = np.random.default_rng(int(qtype))
    cls = get(qtype)
    nblocks = 512
    data = rng.integers(0, 256, (nblocks, cls.type_size), dtype=np.uint8)
    # keep the fp16 scale fields finite so the comparison is about decoding, not NaN payloads
    offsets = {
        GGMLQuantizationType.Q2_K: (80, 82),
        GGMLQuantizationType.Q3_K: (108,),
        GGMLQuantizationType.Q4_K: (0, 2),
        GGMLQuantizationType.Q5_K: (0, 2),
        GGMLQuantizationType.Q6_K: (208,),
    }[qtype]
    for off in offsets:
        halves = (rng.standard_normal(nblocks) * 0.01).astype("<f2")
        data[:, off : off + 2] = halves.view(np.uint8).reshape(nblocks, 2)
    rows = data.reshape(8, -1)
    ncols = nblocks // 8 * 256
    ours = dequantize(rows, qtype, (8, ncols))
    ref = ggml.dequantize(int(qtype), rows, 8, ncols)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_row_pieces(ggml, qtype, monkeypatch):
    """The NumPy path splits a chunk into row pieces; uneven pieces must not change a byte."""
    from quantcli.quants import ggml as ggml_routines

    monkeypatch.setattr(ggml_routines, "SEARCH_SLICE_ELEMENTS", 3 * 256)  # 3 rows of 256 per piece: 3+3+3+...+rest
    x = make_rows(256, seed=31)
    assert x.shape[0] % 3 != 0
    im = make_imatrix(256, seed=32)
    for imatrix in (None, im):
        ours = quantize(x, qtype, imatrix, use_native=False)
        assert_same_bytes(ours, ggml.quantize(int(qtype), x, imatrix), qtype, f"pieces imatrix={imatrix is not None}")


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda t: t.name)
def test_3d_expert_imatrix_slicing(ggml, qtype, native):
    """A 3-D (expert) tensor uses each expert's own imatrix slice, like llama-quantize's per-expert calls."""
    if native:
        require_native()
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((2, 3, 512)) * 0.05).astype(np.float32)
    im = make_imatrix(2 * 512, seed=12)
    ours = quantize(x, qtype, im, use_native=native)
    for e in range(2):
        ref = ggml.quantize(int(qtype), x[e], im[e * 512 : (e + 1) * 512])
        assert_same_bytes(ours[e], ref, qtype, f"expert {e}")


@pytest.mark.parametrize("native", NATIVE)
def test_smollm2_ffn_down(ggml, smollm2_dir, native):
    """Real weights: two SmolLM2-135M ffn_down (down_proj) tensors, rows of 1536, all K-quants."""
    if native:
        require_native()
    from quantcli.loaders import open_checkpoint

    with open_checkpoint(smollm2_dir) as ckpt:
        tensors = [np.asarray(ckpt.read(f"model.layers.{i}.mlp.down_proj.weight"), dtype=np.float32) for i in (0, 29)]
    rng = np.random.default_rng(5)
    for layer, w in zip((0, 29), tensors, strict=True):
        assert w.shape == (576, 1536)
        rows = w[rng.choice(w.shape[0], 96, replace=False)]
        im = (rows.astype(np.float64) ** 2).mean(axis=0).astype(np.float32) * np.float32(50.0) + np.float32(1e-6)
        for qtype in KQUANTS:
            for imatrix in (None, im):
                ours = quantize(rows, qtype, imatrix, use_native=native)
                ref = ggml.quantize(int(qtype), rows, imatrix)
                assert_same_bytes(ours, ref, qtype, f"layer {layer} imatrix={imatrix is not None}")
