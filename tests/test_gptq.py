"""GPTQ core (quantcli/quants/gptq.py): its own properties, and llm-compressor's GPTQ on the same inputs.

The reference runs scripts/reference_gptq.py in the llm-compressor venv (tests/reference.py
`llmcompressor_python`); its outputs are cached under $QUANTCLI_CACHE/reference-gptq/<key>, the key hashing
the inputs, the options, the script and the llm-compressor version, so it runs once (~20 s).
"""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from reference import LLMCOMPRESSOR_VERSION, REPO, cache_root, llmcompressor_python, require_native

from quantcli.quants.gptq import GPTQConfig, Hessian, gptq_quantize, inverse_hessian_factor, symmetric_scales

OUT, IN, GROUP = 256, 512, 64
DEAD_COLUMN = 7


def layer_inputs(seed: int = 20261205) -> tuple[np.ndarray, np.ndarray]:
    """A weight (OUT, IN) with a few outliers, and 16 × 128 correlated activations with unequal channel
    scales and one input channel that is never active."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((OUT, IN)) * 0.02).astype(np.float32)
    weight[rng.random((OUT, IN)) < 2e-3] *= 6
    mix = np.eye(IN) + 0.5 * rng.standard_normal((IN, IN)) / np.sqrt(IN)
    channel = np.exp(0.5 * rng.standard_normal(IN))
    x = (rng.standard_normal((16 * 128, IN)) @ mix) * channel
    x[:, DEAD_COLUMN] = 0.0
    return weight, x.reshape(16, 128, IN).astype(np.float32)


def hessian_of(inputs: np.ndarray) -> np.ndarray:
    h = Hessian(inputs.shape[-1])
    for batch in inputs:
        h.add(batch)
    return h.matrix


def rtn(weight: np.ndarray, bits: int, group: int) -> np.ndarray:
    out, n = weight.shape
    g = weight.reshape(out, n // group, group)
    scale = symmetric_scales(g, bits, "float32")[..., None]
    qmax = (1 << (bits - 1)) - 1
    return (np.clip(np.rint(g / scale), -qmax - 1, qmax) * scale).reshape(out, n)


def output_error(weight: np.ndarray, quantized: np.ndarray, inputs: np.ndarray) -> float:
    x = inputs.reshape(-1, weight.shape[1]).astype(np.float64)
    return float(np.linalg.norm(x @ (weight.astype(np.float64) - quantized.astype(np.float64)).T))


# ------------------------------------------------------------------------------------------ properties


def test_hessian_is_a_running_mean_of_2xtx() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 24))
    h = Hessian(24)
    for part in (x[:7], x[7:7], x[7:200], x[200:]):
        h.add(part)
    assert h.count == 300
    np.testing.assert_allclose(h.matrix, 2 * x.T @ x / 300, rtol=1e-12)


def test_inverse_factor_is_the_upper_cholesky_of_the_damped_inverse() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((700, 300))
    h = x.T @ x
    upper, damp = inverse_hessian_factor(h, 0.01)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(300)
    assert damp == 0.01
    assert np.array_equal(upper, np.triu(upper))
    np.testing.assert_allclose(upper, np.linalg.cholesky(np.linalg.inv(damped)).T, atol=1e-12)


def test_damping_is_raised_when_cholesky_fails() -> None:
    # Eigenvalues 2.015 and -0.015 (mean diag 1): λ = 0.01 leaves it indefinite, 0.02 does not.
    h = np.array([[1.0, 1.015], [1.015, 1.0]])
    _, damp = inverse_hessian_factor(h, 0.01)
    assert damp == pytest.approx(0.02)
    with pytest.raises(ValueError, match="non-finite"):
        inverse_hessian_factor(np.full((2, 2), np.nan), 0.01)


@pytest.mark.parametrize("scales", ["static", "dynamic"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest(scales: str, act_order: bool) -> None:
    weight, inputs = layer_inputs()
    config = GPTQConfig(bits=4, group_size=GROUP, scales=scales, act_order=act_order)
    result = gptq_quantize(weight, hessian_of(inputs), config)
    assert result.codes.dtype == np.int8 and result.codes.shape == (OUT, IN)
    assert result.codes.min() >= -8 and result.codes.max() <= 7
    assert result.scales.shape == (OUT, IN // GROUP)
    # The dead input column carries nothing: its weight is dropped.
    assert not result.codes[:, DEAD_COLUMN].any()
    # Every group has exactly GROUP columns.
    assert np.array_equal(np.bincount(result.g_idx), np.full(IN // GROUP, GROUP))
    if scales == "static" or not act_order:
        assert np.array_equal(result.g_idx, np.arange(IN) // GROUP)
    else:
        # Groups follow decreasing diag(H): the most active column opens group 0.
        diag = np.diag(hessian_of(inputs))
        assert result.g_idx[int(np.argmax(diag))] == 0
        assert not np.array_equal(result.g_idx, np.arange(IN) // GROUP)
    if scales == "static":
        # Scales come from the weight as loaded (the observer), whatever GPTQ does to the columns.
        np.testing.assert_array_equal(result.scales, symmetric_scales(weight.reshape(OUT, -1, GROUP), 4, "float32"))
    ours = output_error(weight, result.dequantize(), inputs)
    baseline = output_error(weight, rtn(weight, 4, GROUP), inputs)
    assert ours < 0.9 * baseline, (ours, baseline)


def test_bf16_scales_are_model_dtype_values() -> None:
    import ml_dtypes

    weight, inputs = layer_inputs()
    weight = weight.astype(ml_dtypes.bfloat16).astype(np.float32)
    result = gptq_quantize(weight, hessian_of(inputs), GPTQConfig(scales="dynamic", scale_dtype="bfloat16"))
    assert np.array_equal(result.scales, result.scales.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of group_size"):
        GPTQConfig(group_size=64, block_size=96, scales="dynamic")
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(np.zeros((4, 96), np.float32), np.eye(96), GPTQConfig(group_size=64))


# ------------------------------------------------------------------------------------- llm-compressor


def reference_run(weight: np.ndarray, inputs: np.ndarray, actorder: str) -> dict[str, np.ndarray]:
    python = llmcompressor_python()
    script = REPO / "scripts" / "reference_gptq.py"
    options = ["--bits", "4", "--group-size", str(GROUP), "--damp", "0.01", "--block-size", "128"]
    options += ["--actorder", actorder]
    digest = hashlib.sha256()
    for part in (weight.tobytes(), inputs.tobytes(), " ".join(options).encode(), script.read_bytes()):
        digest.update(part)
    digest.update(LLMCOMPRESSOR_VERSION.encode())
    folder = cache_root() / "reference-gptq" / digest.hexdigest()[:24]
    out = folder / "reference.npz"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "inputs.npz", weight=weight, inputs=inputs)
        partial = folder / "reference.part.npz"
        proc = subprocess.run(
            [str(python), str(script), str(folder / "inputs.npz"), str(partial), *options],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        partial.replace(out)
    with np.load(out) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.slow
@pytest.mark.parametrize(("actorder", "min_equal"), [("none", 0.999), ("static", 0.999)])
def test_same_integers_and_scales_as_llmcompressor(actorder: str, min_equal: float) -> None:
    weight, inputs = layer_inputs()
    ref = reference_run(weight, inputs, actorder)
    assert not ref["fallback"]
    config = GPTQConfig(bits=4, group_size=GROUP, damp=0.01, block_size=128, act_order=actorder == "static")
    ours = gptq_quantize(weight, hessian_of(inputs), config)
    # Its returned weight is exactly code · scale: the codes read back from it are its integers.
    np.testing.assert_array_equal(ref["codes"] * np.repeat(ref["scales"], GROUP, axis=1), ref["quantized"])
    np.testing.assert_array_equal(ours.scales, ref["scales"])
    equal = float(np.mean(ours.codes == ref["codes"]))
    assert equal >= min_equal, f"{equal:.5%} of the integer codes equal llm-compressor's"
    ours_error = output_error(weight, ours.dequantize(), inputs)
    ref_error = output_error(weight, ref["quantized"], inputs)
    assert abs(ours_error / ref_error - 1) <= 0.01, (ours_error, ref_error)


@pytest.mark.parametrize(
    "config",
    [
        GPTQConfig(bits=4, group_size=GROUP, damp=0.01, act_order=True, scales="static", scale_dtype="bfloat16"),
        GPTQConfig(bits=4, group_size=GROUP, damp=0.01, act_order=True, scales="dynamic", scale_dtype="float16"),
        GPTQConfig(bits=3, group_size=32, damp=0.01, block_size=96, scales="dynamic"),
        GPTQConfig(bits=8, group_size=GROUP, damp=0.01, block_size=64),
    ],
)
def test_native_column_loop_gives_the_numpy_bytes(config: GPTQConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()  # a failure under CI, not a skip
    weight, inputs = layer_inputs()
    hessian = hessian_of(inputs)
    with_c = gptq_quantize(weight, hessian, config)
    monkeypatch.setenv("QUANTCLI_NATIVE", "0")
    with_numpy = gptq_quantize(weight, hessian, config)
    np.testing.assert_array_equal(with_c.codes, with_numpy.codes)
    np.testing.assert_array_equal(with_c.scales.view(np.uint32), with_numpy.scales.view(np.uint32))
    np.testing.assert_array_equal(with_c.g_idx, with_numpy.g_idx)
