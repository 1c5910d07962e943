"""The same conversion gives the same bytes: run twice, with --threads 1 and 2, and through the NumPy path
(QUANTCLI_NATIVE=0) and the C extension.

Fast: `convert --type q8_0` of a tiny llama (Q8_0 + F32 tensors), `quantize Q4_K_M` (with an imatrix)
of a synthetic GGUF whose rows are multiples of 256 (a Q4_K/Q6_K mixture + F32), and the one-pass
`convert --type Q4_K_M` of a 256-wide random llama.
Slow: the SmolLM2-135M fixture through `convert --type q8_0` and `quantize Q4_K_M`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from badinputs import imatrix_entries, run_cli_in_process, write_gguf_imatrix
from reference import require_native
from test_batch_models import tiny_llama
from test_plan_synthetic import build_synthetic_gguf

from quantcli import native
from quantcli.loaders.gguf import GGUFFile


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, *, numpy_path: bool) -> None:
    with monkeypatch.context() as m:
        m.setenv("QUANTCLI_NATIVE", "0" if numpy_path else "1")
        code, _, err = run_cli_in_process(argv)
    assert code == 0, err


def variants(tmp: Path, make_argv, monkeypatch: pytest.MonkeyPatch, with_native: bool) -> dict[str, str]:  # noqa: ANN001
    """sha256 of the output per variant; `make_argv(out)` builds the command for output path `out`."""
    runs = {"numpy-a": (True, None), "numpy-b": (True, None)}
    if with_native:
        runs |= {"c-threads-1": (False, "1"), "c-threads-2": (False, "2"), "c-threads-2-again": (False, "2")}
    digests = {}
    for label, (numpy_path, threads) in runs.items():
        out = tmp / f"{label}.gguf"
        run(make_argv(out) + (["--threads", threads] if threads else []), monkeypatch, numpy_path=numpy_path)
        digests[label] = sha256(out)
    return digests


def types_in(path: Path) -> set[str]:
    with GGUFFile(path) as f:
        return {t.type.name for t in f.tensors.values()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("det") / "tiny", seed=3)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256-wide rows, so a one-pass `convert --type Q4_K_M` uses K-quants without fallbacks."""
    from test_batch_models import SPM_VOCAB, spm_model
    from tiny_models import make_tiny_llama

    directory = make_tiny_llama(tmp_path_factory.mktemp("det-wide") / "wide", hidden=256, layers=2, ff=512,
                                vocab=SPM_VOCAB, seed=6)
    (directory / "tokenizer.model").write_bytes(spm_model())
    return directory


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth")
    model = build_synthetic_gguf(root / "synth-f16.gguf", n_layer=4, seed=5)
    imatrix = write_gguf_imatrix(root / "imatrix.gguf", {
        name: (weights * 3, [3.0]) for name, weights in imatrix_entries(model).items()
    })
    return model, imatrix


def test_convert_q8_0_is_deterministic(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def argv(out: Path) -> list[str]:
        return ["convert", str(tiny_model), "-o", str(out), "--type", "q8_0"]

    digests = variants(tmp_path, argv, monkeypatch, with_native=False)
    assert len(set(digests.values())) == 1, digests
    assert types_in(tmp_path / "numpy-a.gguf") == {"Q8_0", "F32"}


def test_quantize_k_quant_is_deterministic(synthetic: tuple[Path, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model, imatrix = synthetic

    def argv(out: Path) -> list[str]:
        return ["quantize", str(model), str(out), "Q4_K_M", "--imatrix", str(imatrix)]

    digests = variants(tmp_path, argv, monkeypatch, with_native=False)
    assert len(set(digests.values())) == 1, digests
    assert {"Q4_K", "Q6_K", "F32"} <= types_in(tmp_path / "numpy-a.gguf")


def test_one_pass_convert_k_quant_is_deterministic(wide_model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def argv(out: Path) -> list[str]:
        return ["convert", str(wide_model), "-o", str(out), "--type", "Q4_K_M"]

    digests = variants(tmp_path, argv, monkeypatch, with_native=native.available())
    assert len(set(digests.values())) == 1, digests
    assert {"Q4_K", "Q6_K", "F32"} <= types_in(tmp_path / "numpy-a.gguf")
    require_native()  # the NumPy runs above passed; without the C extension its variants did not run


def test_threads_and_c_path_match_numpy(tiny_model: Path, synthetic: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()
    model, imatrix = synthetic
    (tmp_path / "q8").mkdir()
    (tmp_path / "kq").mkdir()
    q8 = variants(tmp_path / "q8", lambda out: ["convert", str(tiny_model), "-o", str(out), "--type", "q8_0"],
                  monkeypatch, with_native=True)
    kq = variants(tmp_path / "kq", lambda out: ["quantize", str(model), str(out), "Q4_K_M", "--imatrix", str(imatrix)],
                  monkeypatch, with_native=True)
    assert len(q8) == 5 and len(set(q8.values())) == 1, q8
    assert len(kq) == 5 and len(set(kq.values())) == 1, kq


@pytest.mark.slow
def test_smollm2_threads_and_paths(smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2-135M: Q8_0 conversion (C 1/2 threads, NumPy) and Q4_K_M (C 1/2 threads) are byte-identical."""
    require_native()
    outs = {}
    for label, numpy_path, threads in (("c1", False, "1"), ("c2", False, "2"), ("numpy", True, None)):
        out = tmp_path / f"smol-q8_0-{label}.gguf"
        run(["convert", str(smollm2_dir), "-o", str(out), "--type", "q8_0"] + (["--threads", threads] if threads else []),
            monkeypatch, numpy_path=numpy_path)
        outs[label] = sha256(out)
    assert len(set(outs.values())) == 1, outs
    f16 = tmp_path / "smol-f16.gguf"
    run(["convert", str(smollm2_dir), "-o", str(f16), "--type", "f16"], monkeypatch, numpy_path=False)
    kq = {}
    for threads in ("1", "2"):
        out = tmp_path / f"smol-q4_k_m-{threads}.gguf"
        run(["quantize", str(f16), str(out), "Q4_K_M", "--threads", threads], monkeypatch, numpy_path=False)
        kq[threads] = sha256(out)
    assert kq["1"] == kq["2"], kq
