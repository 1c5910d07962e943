"""GPTQ on mixture-of-experts models (`convert MOE --type Q4_K_M --method gptq`): each expert of a stacked
tensor is quantized with the Hessian of the tokens routed to it; an expert that saw fewer tokens than a
matrix's input width keeps the round-to-nearest recipe's bytes for that matrix and is reported.

The tiny random checkpoints of tests/test_moe.py (tests/tiny_models.py: rows of 256, Mixtral with 8
experts, the others and GPT-OSS with 4, two used per token), calibrated on 16 × 128 tokens of the bundled
text, so that some of Mixtral's experts are under-sampled for their 512-wide down matrices and the others
are not. Against the recipe without calibration: the same tensor types and file size, other bytes, lower
KL-divergence against the F16 GGUF on the calibration text; stock llama.cpp runs the file; the tokens per
expert of layer 0 (whose input no quantized block has touched yet) are our imatrix's counts of the same
text, which tests/test_moe.py checks against llama-imatrix's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badinputs import run_cli_in_process

from quantcli.runtime.calibrate import DEFAULT_CALIB_TEXT

REPO = Path(__file__).resolve().parent.parent
SEQ_LEN, SAMPLES = 128, 16
CALIB = ["--calib-samples", str(SAMPLES), "--calib-seq-len", str(SEQ_LEN)]
# Mixtral (SentencePiece, renormalised top-k), Qwen2-MoE (a dense shared expert beside the routed ones) and
# GPT-OSS (router bias, softmax over the chosen logits, expert biases): Qwen3-MoE and OLMoE route as
# Mixtral does and are left out to keep the suite's time (each architecture costs about a minute here).
ARCHS = ["mixtral", "qwen2moe", "gpt-oss"]
SPM_ARCHS = {"mixtral"}
STACKS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
PACKED = "calibrated packed formats handle dense models only"


def _cli(args: list[object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcli", *[str(a) for a in args]], capture_output=True, text=True, cwd=REPO
    )


def _cli_json(args: list[object]) -> tuple[dict, str]:
    proc = _cli([*args, "--json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc.stderr


def _tensors(path: Path) -> dict[str, tuple[str, int, bytes]]:
    """name -> (type, row length, bytes)"""
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, int(t.shape[0]), bytes(t.data.reshape(-1).view(np.uint8)))
            for t in GGUFReader(str(path)).tensors}  # fmt: skip


@pytest.fixture(scope="module", params=ARCHS)
def moe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path):
    """(arch, HF dir, our F16 GGUF, our Q4_K_M without calibration)."""
    from tiny_models import make_arch_checkpoint

    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    hf = make_arch_checkpoint(arch, root / "hf", None if arch in SPM_ARCHS else smollm2_dir)
    f16, rtn = root / "f16.gguf", root / "rtn.gguf"
    for out, out_type in ((f16, "f16"), (rtn, "Q4_K_M")):
        proc = _cli(["convert", hf, "--type", out_type, "-o", out])
        assert proc.returncode == 0, proc.stderr[-2000:]
    return arch, hf, f16, rtn


@pytest.mark.slow
def test_gptq_calibrates_each_expert_on_its_own_tokens(moe, tmp_path: Path) -> None:
    arch, hf, f16, rtn = moe
    out = tmp_path / "gptq.gguf"
    doc, stderr = _cli_json(["convert", hf, "--type", "Q4_K_M", "--method", "gptq", *CALIB, "-o", out])
    calib = doc["calibration"]
    # the recipe's types and exact size, other bytes
    ours, plain = _tensors(out), _tensors(rtn)
    assert {n: t[0] for n, t in ours.items()} == {n: t[0] for n, t in plain.items()}
    assert out.stat().st_size == rtn.stat().st_size and ours != plain
    assert ours["blk.0.ffn_gate_inp.weight"] == plain["blk.0.ffn_gate_inp.weight"]  # the F32 router

    # tokens per expert: every (token, slot) once; layer 0 routes as the float model does, so its counts
    # are what our imatrix counts on the same text and chunks
    config = json.loads((hf / "config.json").read_text())
    n_used = config["num_experts_per_tok"]
    layers = calib["experts"]
    assert [entry["layer"] for entry in layers] == [0, 1]
    assert all(sum(entry["tokens"]) == SAMPLES * SEQ_LEN * n_used for entry in layers)
    imatrix = tmp_path / "imatrix.gguf"
    proc = _cli(["imatrix", hf, "--text", DEFAULT_CALIB_TEXT, "--ctx", SEQ_LEN, "--chunks", SAMPLES,
                 "-o", imatrix, "--exact-activations"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from gguf import GGUFReader

    counts = {t.name: t.data.reshape(-1).astype(int).tolist() for t in GGUFReader(str(imatrix)).tensors}
    for stack in STACKS:
        assert layers[0]["tokens"] == counts[f"blk.0.{stack}.weight.counts"], stack

    # under-sampled: fewer tokens than the matrix's input width; exactly those experts keep the recipe's bytes
    n_rounded = 0
    for entry in layers:
        tokens = np.array(entry["tokens"])
        expected = {}
        for stack in STACKS:
            name = f"blk.{entry['layer']}.{stack}.weight"
            qtype, width, data = ours[name]
            rounded = [int(e) for e in np.nonzero(tokens < width)[0]]
            if rounded:
                expected[stack] = rounded
            pairs = zip(_slices(data, tokens.size), _slices(plain[name][2], tokens.size), strict=True)
            for e, (a, b) in enumerate(pairs):
                assert (a == b) == (e in rounded), (name, e, qtype)
        assert entry["under_sampled"] == expected
        n_rounded += len(set().union(*expected.values())) if expected else 0
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    if n_rounded:
        assert len(warnings) == 1 and f"warning: {n_rounded} expert(s) in layer(s)" in warnings[0], stderr
    else:
        assert warnings == [], stderr
    if arch == "mixtral":  # the calibration size was chosen so that both kinds occur
        assert 0 < n_rounded and calib["calibrated_tensors"] == 14

    # closer to the float model than round-to-nearest on the calibration text
    kld = {}
    for name, path in (("gptq", out), ("rtn", rtn)):
        result, _ = _cli_json(["eval", path, "--base", f16, "--text", DEFAULT_CALIB_TEXT, "--ctx", SEQ_LEN,
                               "--chunks", SAMPLES // 2])  # fmt: skip
        kld[name] = result["kld_mean"]
    assert kld["gptq"] < kld["rtn"], kld

    # stock llama.cpp loads and runs it
    from reference import perplexity_chunk_values

    ppl = perplexity_chunk_values("-m", out, "-f", DEFAULT_CALIB_TEXT, "-c", SEQ_LEN, "--chunks", 2, "-t", 2,
                                  chunk=2)  # fmt: skip
    assert np.isfinite(ppl[0]) and ppl[0] > 1


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import make_arch_checkpoint

    return make_arch_checkpoint("mixtral", tmp_path_factory.mktemp("mixtral") / "hf", None)


def _slices(data: bytes, n_expert: int) -> list[bytes]:
    size = len(data) // n_expert
    return [data[e * size : (e + 1) * size] for e in range(n_expert)]


@pytest.mark.slow
def test_experts_without_a_grid_or_with_an_imatrix(mixtral: Path, tmp_path: Path) -> None:
    """MXFP4_MOE: the MXFP4 experts have no GPTQ grid, so they get llama.cpp's quantizer whole (the recipe's
    bytes), are listed in round_to_nearest and are never called under-sampled. With --imatrix, each expert's
    GPTQ importance is its own slice of the file, and an under-sampled expert keeps exactly the bytes of
    `--type Q4_K_M --imatrix`."""
    gptq, rtn = tmp_path / "gptq.gguf", tmp_path / "rtn.gguf"
    doc, stderr = _cli_json(["convert", mixtral, "--type", "MXFP4_MOE", "--method", "gptq", *CALIB,
                             "-o", gptq])  # fmt: skip
    _cli_json(["convert", mixtral, "--type", "MXFP4_MOE", "-o", rtn])
    ours, plain = _tensors(gptq), _tensors(rtn)
    stacks = sorted(n for n in ours if "_exps" in n)
    assert len(stacks) == 6 and all(ours[n] == plain[n] for n in stacks)
    assert all(ours[n] != plain[n] for n in ours if n.endswith(("attn_q.weight", "attn_output.weight")))
    assert doc["calibration"]["round_to_nearest"] == dict.fromkeys(stacks, "MXFP4")
    assert all(entry["under_sampled"] == {} for entry in doc["calibration"]["experts"])
    assert "warning:" not in stderr

    imatrix = tmp_path / "imatrix.gguf"
    proc = _cli(["imatrix", mixtral, "--text", DEFAULT_CALIB_TEXT, "--ctx", SEQ_LEN, "--chunks", 4,
                 "-o", imatrix])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with_im, plain_im = tmp_path / "gptq-im.gguf", tmp_path / "rtn-im.gguf"
    doc, _ = _cli_json(["convert", mixtral, "--type", "Q4_K_M", "--method", "gptq", *CALIB,
                        "--imatrix", imatrix, "-o", with_im])  # fmt: skip
    _cli_json(["convert", mixtral, "--type", "Q4_K_M", "--imatrix", imatrix, "-o", plain_im])
    ours, plain = _tensors(with_im), _tensors(plain_im)
    checked = 0
    for entry in doc["calibration"]["experts"]:
        for base, rounded in entry["under_sampled"].items():
            name = f"blk.{entry['layer']}.{base}.weight"
            pairs = zip(_slices(ours[name][2], 8), _slices(plain[name][2], 8), strict=True)
            for e, (a, b) in enumerate(pairs):
                assert (a == b) == (e in rounded), (name, e)
                checked += 1
    assert checked > 0


@pytest.mark.slow
def test_resume_and_reruns_give_the_same_bytes(
    mixtral: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs write the same bytes; a run interrupted in block 1 with --resume continues from its spill
    directory to those bytes, and reports the same tokens per expert (kept for the replayed block)."""
    import quantcli.quants.gptq_ggml as gptq_ggml

    hf = mixtral
    args = ["convert", str(hf), "--type", "Q4_K_M", "--method", "gptq", *CALIB, "--json", "--force"]
    runs = []
    for name in ("first", "second"):
        code, stdout, stderr = run_cli_in_process([*args, "-o", str(tmp_path / f"{name}.gguf")])
        assert code == 0, stderr
        runs.append(json.loads(stdout))
    assert runs[0]["sha256"] == runs[1]["sha256"]
    real = gptq_ggml.gptq_ggml

    def interrupted_in_block_1(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        if kw.get("name", "").startswith("blk.1.ffn_down_exps"):
            raise KeyboardInterrupt
        return real(*a, **kw)

    out = tmp_path / "out.gguf"
    monkeypatch.setattr(gptq_ggml, "gptq_ggml", interrupted_in_block_1)
    code, _, _ = run_cli_in_process([*args, "-o", str(out), "--resume"])
    assert code == 130 and not out.exists() and (tmp_path / ".out.gguf.calibration" / "index.json").is_file()
    monkeypatch.undo()
    code, stdout, stderr = run_cli_in_process([*args, "-o", str(out), "--resume"])
    assert code == 0, stderr
    resumed = json.loads(stdout)
    assert resumed["calibration"]["resumed_blocks"] == 1 and resumed["sha256"] == runs[0]["sha256"]
    assert resumed["calibration"]["experts"] == runs[0]["calibration"]["experts"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "Q4_K_M", "--method", "awq"], "AWQ handles dense models only"),
        (["--type", "Q4_K_M", "--method", "awq-gptq"], "AWQ handles dense models only"),
        (["--format", "ct", "--bits", "4", "--group-size", "32", "--method", "gptq"], PACKED),
        (["--format", "mlx", "--bits", "4", "--group-size", "32", "--method", "gptq"], PACKED),
    ],
)
def test_awq_and_packed_calibration_refuse_experts(tmp_path: Path, extra: list[str], message: str) -> None:
    """Exit 5, one line naming the mixture of experts, nothing written (before the text is read)."""
    from test_moe import _synthetic_mixtral

    hf = _synthetic_mixtral(tmp_path / "hf")
    out = tmp_path / "out"
    code, _, stderr = run_cli_in_process(["convert", str(hf), *extra, "-o", str(out)])
    assert code == 5, stderr
    assert "mixture of experts" in stderr and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_expert_hessians_see_only_their_routed_rows() -> None:
    """ExpertInputs: the tokens of an expert are its (token, slot) pairs; gate/up read the token's row
    (rows (n, 1, d)), down each slot's own row (rows (n, k, d)); an unused expert has count 0."""
    from quantcli.engine.calibrate import expert_report, under_sampled
    from quantcli.quants.gptq import Hessian
    from quantcli.runtime.calibrate import ExpertInputs

    rng = np.random.default_rng(0)
    selected = np.array([[0, 2], [2, 1], [0, 1], [2, 0], [1, 2]])  # 5 tokens, 2 slots, expert 3 unused
    shared = rng.standard_normal((5, 1, 6)).astype(np.float32)
    per_slot = rng.standard_normal((5, 2, 6)).astype(np.float32)
    for rows in (shared, per_slot):
        inputs = ExpertInputs(rows, selected, 4)
        assert inputs.tokens().tolist() == [3, 3, 4, 0]
        for e in range(4):
            expected = Hessian(6)
            for t, s in zip(*np.nonzero(selected == e), strict=True):
                expected.add(rows[t, s % rows.shape[1]][None])
            got = inputs.hessian(e, "blk.0.ffn_up_exps.weight")
            assert got.count == expected.count
            assert np.allclose(got.matrix, expected.matrix, rtol=1e-5, atol=1e-6)
    assert under_sampled(np.array([3, 3, 4, 0]), 4) == [0, 1, 3]
    report = expert_report({0: np.array([3, 9, 4, 0])}, {0: {"ffn_up_exps": 4, "ffn_down_exps": 8}})
    assert report == [{"layer": 0, "tokens": [3, 9, 4, 0],
                       "under_sampled": {"ffn_down_exps": [0, 2, 3], "ffn_up_exps": [0, 3]}}]  # fmt: skip


def test_under_sampled_experts_keep_the_recipes_bytes(tmp_path: Path) -> None:
    """A small BF16 Mixtral (4 experts, rows of 32, down rows of 64) on 2 × 64 tokens: the experts with fewer
    routed tokens than a matrix's input width keep that matrix's round-to-nearest bytes, the others get
    GPTQ's; same size as the recipe; one warning line naming them (no torch, no llama.cpp)."""
    from test_moe import _synthetic_mixtral

    hf = _synthetic_mixtral(tmp_path / "hf")
    gptq, rtn = tmp_path / "gptq.gguf", tmp_path / "rtn.gguf"
    code, stdout, stderr = run_cli_in_process(["convert", str(hf), "--type", "Q4_0", "--method", "gptq",
                                               "--calib-samples", "2", "--calib-seq-len", "64", "-o", str(gptq),
                                               "--json"])  # fmt: skip
    assert code == 0, stderr
    calib = json.loads(stdout)["calibration"]
    code, _, stderr_rtn = run_cli_in_process(["convert", str(hf), "--type", "Q4_0", "-o", str(rtn)])
    assert code == 0, stderr_rtn
    assert gptq.stat().st_size == rtn.stat().st_size
    ours, plain = _tensors(gptq), _tensors(rtn)
    n_rounded = n_calibrated = 0
    for entry in calib["experts"]:
        assert sum(entry["tokens"]) == 2 * 64 * 2
        experts = set()
        for stack in STACKS:
            name = f"blk.{entry['layer']}.{stack}.weight"
            rounded = [e for e, t in enumerate(entry["tokens"]) if t < ours[name][1]]
            assert entry["under_sampled"].get(stack, []) == rounded
            experts |= set(rounded)
            pairs = zip(_slices(ours[name][2], 4), _slices(plain[name][2], 4), strict=True)
            for e, (a, b) in enumerate(pairs):
                assert (a == b) == (e in rounded), (name, e)
                n_calibrated += e not in rounded
        n_rounded += len(experts)
    assert n_rounded > 0 and n_calibrated > 0, calib["experts"]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"warning: {n_rounded} expert(s) in layer(s)" in warnings[0], stderr
