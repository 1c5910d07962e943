"""The calibration stage (--method gptq): calibration data, the layer-sequential runtime, GPTQ into packed
formats and onto GGUF grids end to end, and the refusals. Quality on a real model is measured in
docs/calibration.md (scripts/measure_calibration.py); here a tiny random Llama with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from badinputs import run_cli_in_process
from reference import tool, tool_env
from tiny_models import make_tiny_llama

from quantcli.errors import InputInvalid
from quantcli.loaders import open_checkpoint
from quantcli.runtime.calibrate import (
    DEFAULT_CALIB_TEXT,
    BlockInputs,
    calibrate_blocks,
    calibration_samples,
    read_calibration_text,
)
from quantcli.runtime.hf import HFSource
from quantcli.runtime.model import Model
from quantcli.runtime.tokenizer import Tokenizer

CALIB = ["--calib-samples", "4", "--calib-seq-len", "64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """Two Llama blocks of width 128 with SmolLM2's byte-level BPE vocabulary (no torch needed)."""
    d = make_tiny_llama(tmp_path_factory.mktemp("calib") / "tiny", hidden=128, heads=4, kv_heads=2, ff=256,
                        vocab=49152, layers=2)  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / name, d / name)
    return d


def _convert(*argv: str) -> dict:
    code, out, err = run_cli_in_process(["convert", *argv, "--json", "--force"])
    assert code == 0, err
    return json.loads(out)


# ---- calibration data -------------------------------------------------------------------------------


class _Chars(Tokenizer):
    """One token per character, BOS 1 prepended: window boundaries are easy to check."""

    def __init__(self, add_bos: bool) -> None:
        super().__init__(bos_id=1, eos_id=2, add_bos=add_bos)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return ([1] if add_special and self.add_bos else []) + [ord(c) for c in text]


def test_samples_are_llama_imatrix_chunks() -> None:
    text = "".join(chr(65 + i % 26) for i in range(100))
    s = calibration_samples(_Chars(add_bos=True), text, samples=3, seq_len=20)
    tokens = [1, *[ord(c) for c in text]]
    assert s.shape == (3, 20)
    for i in range(3):  # consecutive windows of the BOS-prefixed stream, each starting with BOS
        assert s[i, 0] == 1 and list(s[i, 1:]) == tokens[i * 20 + 1 : (i + 1) * 20]
    # fewer windows than asked when the text is short; none at all is an error
    assert calibration_samples(_Chars(add_bos=False), text, samples=50, seq_len=20).shape == (5, 20)
    with pytest.raises(InputInvalid, match="less than one sample"):
        calibration_samples(_Chars(add_bos=True), "short", samples=4, seq_len=64)


def test_calibration_text_sources(tmp_path: Path) -> None:
    bundled = read_calibration_text([])
    assert bundled.sources == ("quantcli/data/calib.txt",)
    assert bundled.text == DEFAULT_CALIB_TEXT.read_text(encoding="utf-8")
    # not the evaluation text of --verify / eval
    assert "On Bread, Rivers" not in bundled.text
    plain = tmp_path / "a.txt"
    plain.write_text("first document")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n')
    both = read_calibration_text([plain, jsonl])
    assert both.text == "first document\n\nsecond\n\nthird"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", b"\xff\xfe caf\xe9", "not UTF-8"),
        ("empty.jsonl", b"\n\n", "no records"),
        ("nofield.jsonl", b'{"content": "x"}\n', 'string "text" field'),
        ("broken.jsonl", b'{"text": "x"\n', "not a JSON object"),
        ("blank.txt", b"   \n", "no text"),
    ],
)
def test_bad_calibration_text(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputInvalid, match=message):
        read_calibration_text([path])


# ---- the layer-sequential runtime ---------------------------------------------------------------------


def test_blocks_see_the_quantized_previous_block(tiny: Path) -> None:
    """Block 0's Hessians are 2·XᵀX/m of its normed inputs; block 1's input is block 0 run with the weights
    the quantizer returned, not the source's."""
    model = Model(HFSource(tiny), emulate_ggml=False)
    rng = np.random.default_rng(0)
    samples = rng.integers(3, 49152, size=(3, 32))
    seen: dict[int, BlockInputs] = {}
    inputs: dict[int, np.ndarray] = {}
    outputs: dict[int, np.ndarray] = {}
    scaled = {"blk.0.ffn_down.weight": model.transient_weight("blk.0.ffn_down.weight") * np.float32(0.5)}

    def quantize_block(block: BlockInputs) -> dict[str, np.ndarray]:
        # the block's rows are the runner's working array (updated in place after this returns)
        seen[block.layer], inputs[block.layer] = block, block.x.copy()
        outputs[block.layer] = block.run({})
        return scaled if block.layer == 0 else {}

    calibrate_blocks(model, samples, quantize_block)
    x0 = model.embed_sequences(samples)
    h = model._rms_norm(x0, model.transient_weight("blk.0.attn_norm.weight"))
    expected = 2.0 * (h.astype(np.float64).T @ h.astype(np.float64)) / h.shape[0]
    hq = seen[0].hessians["blk.0.attn_q.weight"]
    assert hq is seen[0].hessians["blk.0.attn_k.weight"]  # one Hessian for rows q/k/v share
    assert hq.count == 96
    np.testing.assert_allclose(hq.matrix, expected, rtol=1e-5, atol=1e-7)
    assert set(seen[0].hessians) == {f"blk.0.{n}.weight" for n in
                                     ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}  # fmt: skip
    x1 = model.sequence_layer(0, x0.copy(), 3, weight=lambda n: scaled.get(n, model.transient_weight(n)))
    np.testing.assert_array_equal(inputs[1], x1)
    np.testing.assert_array_equal(outputs[0], model.sequence_layer(0, x0.copy(), 3))


# ---- end to end -------------------------------------------------------------------------------------------


def _block0_inputs(tiny: Path, calib: Path) -> tuple[Model, np.ndarray]:
    """Block 0's normed attention input rows on the calibration samples the CLI takes from `calib`."""
    from quantcli.runtime import load_tokenizer

    src = HFSource(tiny)
    model = Model(src, emulate_ggml=False)
    samples = calibration_samples(load_tokenizer(tiny, src), calib.read_text(), 4, 64)
    x = model.embed_sequences(samples)
    return model, model._rms_norm(x, model.transient_weight("blk.0.attn_norm.weight"))


def _output_error(w: np.ndarray, wq: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm((w - wq) @ x.T))


@pytest.mark.parametrize("fmt", ["ct", "gptq", "mlx"])
def test_packed_gptq_beats_rtn_on_the_calibration_inputs(tiny: Path, tmp_path: Path, fmt: str) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text(DEFAULT_CALIB_TEXT.read_text(encoding="utf-8")[:20000])
    gptq = _convert(str(tiny), "--format", fmt, "--bits", "4", "--group-size", "32", "--method", "gptq",
                    "--calib", str(calib), *CALIB, "-o", str(tmp_path / "gptq"))  # fmt: skip
    rtn = _convert(str(tiny), "--format", fmt, "--bits", "4", "--group-size", "32", "-o", str(tmp_path / "rtn"))
    facts = gptq["calibration"]
    assert (facts["method"], facts["samples"], facts["seq_len"], facts["tokens"]) == ("gptq", 4, 64, 256)
    assert facts["act_order"] is True
    assert facts["group_order"] == ("g_idx" if fmt == "gptq" else "contiguous")
    weights = {which: {f["name"]: f for f in doc["files"] if f["name"].endswith(".safetensors")}
               for which, doc in (("gptq", gptq), ("rtn", rtn))}  # fmt: skip
    assert {n: f["bytes"] for n, f in weights["gptq"].items()} == {n: f["bytes"] for n, f in weights["rtn"].items()}
    assert gptq["sha256"] != rtn["sha256"]
    assert not list(tmp_path.glob(".*calibration*"))  # the spill directory is gone
    if fmt == "gptq":
        config = json.loads((tmp_path / "gptq" / "config.json").read_text())
        assert config["quantization_config"]["desc_act"] is True
    _, x = _block0_inputs(tiny, calib)
    src = open_checkpoint(tiny)
    name = "model.layers.0.self_attn.q_proj.weight"
    w = np.asarray(src.read(name), dtype=np.float32)
    errors = {}
    for which in ("gptq", "rtn"):
        with open_checkpoint(tmp_path / which) as out:
            errors[which] = _output_error(w, np.asarray(out.read(name), dtype=np.float32), x)
    # q_proj's rows are permuted in the runtime's layout; its input columns (x's) are not
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


# Q4_K_M: K-quants and their 32-block fallbacks (Q5_0, Q8_0); IQ4_XS: the lookup-table grids, IQ4_XS on the
# 256-wide ffn_down and its IQ4_NL fallback on every 128-wide row (blk.0.attn_q among them).
@pytest.mark.parametrize(("ftype", "types"), [("Q4_K_M", {"Q4_K", "Q5_0"}), ("IQ4_XS", {"IQ4_XS", "IQ4_NL"})])
def test_gguf_gptq_same_types_and_size_as_the_recipe(tiny: Path, tmp_path: Path, ftype: str, types: set[str]) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text(DEFAULT_CALIB_TEXT.read_text(encoding="utf-8")[:20000])
    gptq = _convert(str(tiny), "--type", ftype, "--method", "gptq", "--calib", str(calib), *CALIB,
                    "-o", str(tmp_path / "gptq.gguf"))  # fmt: skip
    rtn = _convert(str(tiny), "--type", ftype, "-o", str(tmp_path / "rtn.gguf"))
    assert types <= set(gptq["tensor_types"])
    assert gptq["tensor_types"] == rtn["tensor_types"] and gptq["bytes"] == rtn["bytes"]
    assert gptq["sha256"] != rtn["sha256"]
    assert gptq["calibration"]["calibrated_tensors"] == 14 and gptq["calibration"]["round_to_nearest"] == {}
    from quantcli.runtime.weights import GGUFSource

    model, x = _block0_inputs(tiny, calib)
    w = model.transient_weight("blk.0.attn_q.weight")
    errors = {which: _output_error(w, GGUFSource(tmp_path / f"{which}.gguf").load("blk.0.attn_q.weight"), x)
              for which in ("gptq", "rtn")}  # fmt: skip
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


def test_size_target_with_gptq_keeps_the_allocation_and_the_size(tiny: Path, tmp_path: Path) -> None:
    """--target-size picks the types, --method gptq then fills them: same types, same exact size as the plan."""
    code, _, err = run_cli_in_process(["plan", str(tiny), "--target-size", "1"])
    assert code == 2, err
    smallest = int(re.findall(r"[0-9][0-9,]*", err)[1].replace(",", ""))
    budget = smallest + 50_000  # the linears (295 k weights) between 4.5 and 8.5 bits: every one quantized
    code, out, err = run_cli_in_process(["plan", str(tiny), "--target-size", str(budget), "--method", "gptq",
                                         *CALIB, "--json"])  # fmt: skip
    assert code == 0, err
    plan = json.loads(out)
    sized = _convert(str(tiny), "--target-size", str(budget), "-o", str(tmp_path / "rtn.gguf"))
    gptq = _convert(str(tiny), "--target-size", str(budget), "--method", "gptq", *CALIB,
                    "-o", str(tmp_path / "gptq.gguf"))  # fmt: skip
    assert plan["bytes"] == sized["bytes"] == gptq["bytes"] == (tmp_path / "gptq.gguf").stat().st_size <= budget
    assert gptq["tensor_types"] == sized["tensor_types"] and gptq["sha256"] != sized["sha256"]
    assert "IQ4_XS" in gptq["tensor_types"]  # the allocation's choice for a 256-wide ffn_down here
    assert gptq["calibration"]["calibrated_tensors"] == 14 and gptq["calibration"]["round_to_nearest"] == {}


def test_gguf_gptq_lists_the_linears_without_a_grid(tiny: Path, tmp_path: Path) -> None:
    """TQ1_0 (base-3 packed, no LevelGrid) stays round-to-nearest on the 256-wide ffn_down; the 128-wide rows'
    Q4_0 fallback is calibrated."""
    doc = _convert(str(tiny), "--type", "TQ1_0", "--method", "gptq", *CALIB, "-o", str(tmp_path / "tq.gguf"))
    assert doc["calibration"]["round_to_nearest"] == {f"blk.{i}.ffn_down.weight": "TQ1_0" for i in (0, 1)}
    assert doc["calibration"]["calibrated_tensors"] == 12


def test_dry_run_says_what_calibration_would_use(tiny: Path, tmp_path: Path) -> None:
    for flags in (["--bits", "4"], ["--format", "gptq", "--bits", "4", "--group-size", "32"]):
        doc = _convert(str(tiny), *flags, "--method", "gptq", "--calib-samples", "8", "--dry-run",
                       "-o", str(tmp_path / "out"))  # fmt: skip
        assert doc["calibration"] == {"method": "gptq", "text": ["quantcli/data/calib.txt"], "samples": 8,
                                      "seq_len": 512, "act_order": flags[0] == "--format", "damp": 0.1}  # fmt: skip
    code, out, err = run_cli_in_process(["plan", str(tiny), "--type", "Q4_K_M", "--method", "gptq", "--json"])
    assert code == 0, err
    assert json.loads(out)["calibration"]["method"] == "gptq"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("target", [["--bits", "4"], ["--type", "IQ4_XS"]], ids=["bits4", "IQ4_XS"])
def test_gguf_gptq_runs_in_llama_cpp(tiny: Path, tmp_path: Path, target: list[str]) -> None:
    out = tmp_path / "gptq.gguf"
    doc = _convert(str(tiny), *target, "--method", "gptq", *CALIB, "-o", str(out))
    assert doc["calibration"]["calibrated_tensors"] == 14 and doc["calibration"]["round_to_nearest"] == {}
    proc = subprocess.run([str(tool("llama-simple")), "-m", str(out), "-n", "8", "The capital of France is"],
                          capture_output=True, env=tool_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- refusals: one line, an exit code, nothing written ------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--type", "f16", "--method", "gptq"], 2, "needs a quantized output"),
        (["--format", "awq", "--bits", "4", "--method", "gptq"], 5, "cannot be stored in --format awq"),
        (["--bits", "4", "--method", "gptq", "--act-order"], 2, "packed formats only"),
        (["--bits", "4", "--calib", "x.txt"], 2, "need --method gptq"),
        (["--bits", "4", "--method", "awesome"], 2, "unknown --method"),
        (["--bits", "4", "--method", "gptq", "--calib", "/nonexistent.txt"], 3, "does not exist"),
        (["--bits", "4", "--method", "gptq", "--calib-samples", "0"], 2, "at least 1"),
        (["--bits", "4", "--method", "gptq", "--damp", "1.5"], 2, "--damp"),
    ],
)
def test_refused_before_any_work(tiny: Path, tmp_path: Path, extra: list[str], code: int, message: str) -> None:
    out = tmp_path / "out"
    status, stdout, stderr = run_cli_in_process(["convert", str(tiny), *extra, "-o", str(out)])
    assert status == code, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [(b"\xff\xfe\xfd", 4, "not UTF-8"), (b"tiny", 4, "less than one sample"), (b"", 4, "no text")],
)
def test_bad_calibration_file_writes_nothing(tiny: Path, tmp_path: Path, content: bytes, code: int, message: str) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_bytes(content)
    out = tmp_path / "out.gguf"
    status, _, stderr = run_cli_in_process(["convert", str(tiny), "--bits", "4", "--method", "gptq",
                                            "--calib", str(calib), "-o", str(out)])  # fmt: skip
    assert status == code and message in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt"]


def test_gguf_source_refused(tiny: Path, tmp_path: Path) -> None:
    f16 = tmp_path / "f16.gguf"
    _convert(str(tiny), "--type", "f16", "-o", str(f16))
    status, _, stderr = run_cli_in_process(["quantize", str(f16), str(tmp_path / "q.gguf"), "Q4_K_M",
                                            "--method", "gptq"])  # fmt: skip
    assert status == 5 and "needs an HF checkpoint" in stderr, stderr


def test_batch_calibrates_as_convert_does(tiny: Path, tmp_path: Path) -> None:
    """A manifest's calibration options are convert's (one make_job): same bytes, and the --calib file is an
    input of the skip-if-done fingerprint (editing it makes the job stale)."""
    from quantcli.batch import load_manifest, run_local

    calib = tmp_path / "calib.txt"
    calib.write_text(DEFAULT_CALIB_TEXT.read_text(encoding="utf-8")[:20000])
    options = {"method": "gptq", "calib": [str(calib)], "calib_samples": 4, "calib_seq_len": 64}
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(json.dumps({"jobs": [
        {"source": str(tiny), "type": "Q4_K_M", "options": options, "output": "batch/q4.gguf"},
        {"source": str(tiny), "format": "ct", "bits": 4, "options": {**options, "group_size": 32}, "output": "batch/ct"},
    ]}))  # fmt: skip
    results = sorted(run_local(load_manifest(manifest)), key=lambda r: r["entry"])
    assert [r["status"] for r in results] == ["converted", "converted"], results
    q4 = _convert(str(tiny), "--type", "Q4_K_M", "--method", "gptq", "--calib", str(calib), *CALIB,
                  "-o", str(tmp_path / "cli.gguf"))  # fmt: skip
    assert q4["sha256"] == results[0]["sha256"]
    ct = _convert(str(tiny), "--format", "ct", "--bits", "4", "--group-size", "32", "--method", "gptq",
                  "--calib", str(calib), *CALIB, "-o", str(tmp_path / "cli-ct"))  # fmt: skip
    assert ct["sha256"] == results[1]["sha256"]
    assert [r["status"] for r in run_local(load_manifest(manifest))] == ["skipped", "skipped"]
    calib.write_text(calib.read_text() + "\nmore text")
    assert [r["status"] for r in run_local(load_manifest(manifest))] == ["converted", "converted"]


@pytest.mark.parametrize("flags", [["--type", "Q4_K_M"], ["--format", "gptq", "--bits", "4", "--group-size", "32"]])
def test_resume_replays_the_finished_blocks(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            flags: list[str]) -> None:  # fmt: skip
    """An interrupted calibrating run keeps its finished blocks with --resume; the next run replays them
    and writes the bytes of an uninterrupted run."""
    import quantcli.quants.gptq as gptq
    import quantcli.quants.gptq_ggml as gptq_ggml

    fresh = _convert(str(tiny), *flags, "--method", "gptq", *CALIB, "-o", str(tmp_path / "fresh"))
    out = tmp_path / "out"
    # the calibration stage imports both where it runs them: patched in their own modules
    real_ggml, real_packed = gptq_ggml.gptq_ggml, gptq.gptq_quantize

    def fail_in_block_1(real):  # noqa: ANN001, ANN202
        def wrapped(weight, hessian, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if weight.shape == (128, 256):  # ffn_down: block 0 passes it first, block 1 fails there
                calls.append(1)
                if len(calls) == 2:
                    raise KeyboardInterrupt
            return real(weight, hessian, *args, **kwargs)

        return wrapped

    calls: list[int] = []
    monkeypatch.setattr(gptq_ggml, "gptq_ggml", fail_in_block_1(real_ggml))
    monkeypatch.setattr(gptq, "gptq_quantize", fail_in_block_1(real_packed))
    code, _, _ = run_cli_in_process(["convert", str(tiny), *flags, "--method", "gptq", *CALIB, "-o", str(out),
                                     "--resume"])  # fmt: skip
    assert code == 130 and calls == [1, 1]  # interrupted (Ctrl-C's exit code) in block 1
    assert not out.exists() and (tmp_path / ".out.calibration" / "index.json").is_file()
    monkeypatch.undo()
    resumed = _convert(str(tiny), *flags, "--method", "gptq", *CALIB, "-o", str(out), "--resume")
    assert resumed["calibration"]["resumed_blocks"] == 1
    assert resumed["sha256"] == fresh["sha256"]
    assert not (tmp_path / ".out.calibration").exists()
    # without --resume a left-over spill directory is not trusted
    again = _convert(str(tiny), *flags, "--method", "gptq", *CALIB, "-o", str(tmp_path / "again"))
    assert again["calibration"]["resumed_blocks"] == 0

