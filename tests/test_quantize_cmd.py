"""`quantcli quantize` == `llama-quantize`, byte for byte (sha256), for every recipe we offer.

Models: the synthetic 16-layer llama of test_plan_synthetic (rows multiples of 256, every layer-position
rule) for every recipe; an 8-layer one (the imatrix rules act at n/8) for every imatrix recipe and the
slow NumPy IQ4 quantizers; small tied / F32 / row-320 (fallback) / 8-expert MoE variants; and
SmolLM2-135M (row 576: fallbacks, tied embeddings) converted to F16 by llama.cpp's own
convert_hf_to_gguf.py, at Q4_K_M only (the time budget: a few minutes on 2 cores). imatrix files come
from llama-imatrix on a small text (GGUF and legacy .dat) or are written by hand (MoE).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
from test_plan_synthetic import build_synthetic_gguf

from quantcli.cli import main as cli_main
from quantcli.loaders.gguf import GGUFFile

pytestmark = pytest.mark.slow

ALL_RECIPES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K", "TQ1_0", "TQ2_0", "MXFP4_MOE", "F16", "BF16", "F32",
]  # fmt: skip
SLOW_NUMPY_RECIPES = ["IQ4_NL", "IQ4_XS"]  # NumPy IQ4 search: run on the small model
IMATRIX_RECIPES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
    "Q5_K_S", "Q5_K_M", "Q6_K",
]  # fmt: skip
TEXT = " ".join(
    "the quick brown fox jumps over a lazy dog while seven sailors sing old songs about islands".split() * 60
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def llama_quantize(src: Path, out: Path, recipe: str, *options: str) -> subprocess.CompletedProcess[str]:
    from reference import tool, tool_env

    proc = subprocess.run(
        [str(tool("llama-quantize")), *options, str(src), str(out), recipe],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def quantcli(*argv: str) -> int:
    try:
        cli_main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def assert_same(src: Path, tmp: Path, recipe: str, *options: str) -> None:
    ref, ours = tmp / f"ref-{recipe}.gguf", tmp / f"ours-{recipe}.gguf"
    llama_quantize(src, ref, recipe, *options)
    assert quantcli("quantize", str(src), str(ours), recipe, *options, "--json", "--force") == 0
    assert ours.stat().st_size == ref.stat().st_size
    assert sha256(ours) == sha256(ref), f"{recipe} {options}: output differs from llama-quantize"
    ref.unlink()
    ours.unlink()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_gguf(tmp_path_factory.mktemp("synth") / "synth-f16.gguf", n_ff=256, n_vocab=320)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_gguf(
        tmp_path_factory.mktemp("small") / "small-f16.gguf", seed=1, n_layer=8, n_ff=256, n_vocab=320
    )


def make_imatrix(model: Path, out: Path, fmt: str = "gguf") -> Path:
    from reference import tool, tool_env

    text = out.with_suffix(".txt")
    text.write_text(TEXT)
    proc = subprocess.run(
        [
            str(tool("llama-imatrix")),
            "-m",
            str(model),
            "-f",
            str(text),
            "-o",
            str(out),
            "-c",
            "128",
            "--chunks",
            "3",
            "--no-ppl",
            "-t",
            "2",
            "--output-format",
            fmt,
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def small_imatrix(small: Path) -> Path:
    return make_imatrix(small, small.parent / "imatrix.gguf")


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_synthetic_matches_llama_quantize(synth: Path, tmp_path: Path, recipe: str) -> None:
    assert_same(synth, tmp_path, recipe)


@pytest.mark.parametrize("recipe", SLOW_NUMPY_RECIPES)
def test_iq4_matches_llama_quantize(small: Path, tmp_path: Path, recipe: str) -> None:
    assert_same(small, tmp_path, recipe)


# The imatrix only changes rules at n/8 (Q4_0/Q5_0/IQ4 ffn_down): the 8-layer model hits them, at half
# the cost of the 16-layer one.
@pytest.mark.parametrize("recipe", IMATRIX_RECIPES + SLOW_NUMPY_RECIPES)
def test_synthetic_with_imatrix_matches(
    small: Path, small_imatrix: Path, tmp_path: Path, recipe: str
) -> None:
    assert_same(small, tmp_path, recipe, "--imatrix", str(small_imatrix))


def test_legacy_dat_imatrix_matches(small: Path, tmp_path: Path) -> None:
    dat = make_imatrix(small, tmp_path / "imatrix.dat", fmt="dat")
    assert_same(small, tmp_path, "Q4_0", "--imatrix", str(dat))


def test_imatrix_filters_and_overrides_match(small: Path, small_imatrix: Path, tmp_path: Path) -> None:
    assert_same(small, tmp_path, "Q3_K_S", "--imatrix", str(small_imatrix), "--include-weights", "ffn_down")
    assert_same(small, tmp_path, "Q4_0", "--imatrix", str(small_imatrix), "--exclude-weights", "blk.0.")
    assert_same(
        small,
        tmp_path,
        "Q4_K_M",
        "--tensor-type",
        "blk\\.1\\.=q5_0",
        "--tensor-type",
        "attn_v=q8_0",
        "--output-tensor-type",
        "q4_0",
        "--token-embedding-type",
        "q8_0",
    )
    assert_same(small, tmp_path, "Q5_K_M", "--pure")
    assert_same(small, tmp_path, "Q6_K", "--leave-output-tensor")


def test_override_kv_matches(small: Path, small_imatrix: Path, tmp_path: Path) -> None:
    # block_count=6 also changes the layer rules (the loader reads hyper-parameters through overrides).
    assert_same(
        small, tmp_path, "Q4_K_M", "--imatrix", str(small_imatrix),
        "--override-kv", "general.name=str:renamed", "--override-kv", "llama.context_length=int:-77",
        "--override-kv", "x.f=float:1.3e2junk", "--override-kv", "x.b=bool:true",
        "--override-kv", "llama.block_count=int:6",
    )  # fmt: skip


def test_odd_tensors_match(tmp_path: Path) -> None:
    """Tensors at the edges of tensor_allows_quantization: a 2-D bias, a 5-character name (C's rfind quirk
    quantizes it), rope_freqs stored with trailing 1-dims (written back 1-D), an F16 1-D tensor."""
    import numpy as np

    rng = np.random.default_rng(5)
    extra = {
        "abcde": rng.standard_normal((2, 256)).astype(np.float16),
        "blk.0.attn_q.bias": rng.standard_normal((2, 256)).astype(np.float16),
        "rope_freqs.weight": rng.standard_normal((1, 1, 32)).astype(np.float32),
        "blk.1.extra_gate.weight": rng.standard_normal(256).astype(np.float16),
    }
    src = build_synthetic_gguf(tmp_path / "odd-names.gguf", n_layer=2, n_ff=256, n_vocab=320, extra=extra)
    for recipe in ("Q8_0", "Q4_K_M"):
        assert_same(src, tmp_path, recipe)


def test_fallbacks_match(tmp_path: Path) -> None:
    """Row length 320: K/IQ types fall back (Q4_0, Q5_1, Q8_0, IQ4_NL, F16 for 32-indivisible rows)."""
    src = build_synthetic_gguf(tmp_path / "odd.gguf", n_layer=2, n_embd=320, n_ff=256, n_vocab=320)
    for recipe in ("Q2_K", "Q5_K_M", "Q6_K", "IQ4_XS"):
        assert_same(src, tmp_path, recipe)


def test_tied_embeddings_match(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "tied.gguf", tied=True, n_layer=4, n_ff=256, n_vocab=320)
    for recipe in ("Q4_K_M", "Q8_0", "Q4_0"):
        assert_same(src, tmp_path, recipe)


def test_f32_source_matches(tmp_path: Path) -> None:
    src = build_synthetic_gguf(tmp_path / "f32.gguf", dtype="f32", n_layer=2, n_ff=256, n_vocab=320)
    for recipe in ("Q5_1", "Q6_K", "BF16"):
        assert_same(src, tmp_path, recipe)


# --- SmolLM2-135M (converted by llama.cpp's convert_hf_to_gguf.py) ----------------------------------


@pytest.fixture(scope="session")
def smollm2_f16(smollm2_dir: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py --outtype f16 of the fixture, cached next to the fixture."""
    from reference import cache_root, convert_with_llamacpp

    cache = cache_root() / "plan-tests"
    cache.mkdir(parents=True, exist_ok=True)
    weights = smollm2_dir / "model.safetensors"
    stamp = f"{weights.stat().st_size}-{int(weights.stat().st_mtime)}"
    out = cache / f"SmolLM2-135M-F16-{stamp}.gguf"
    if not out.exists():
        tmp = out.with_suffix(".part")
        proc = convert_with_llamacpp(smollm2_dir, tmp, "f16")
        assert proc.returncode == 0, proc.stderr[-3000:]
        tmp.rename(out)
    for older in cache.glob("SmolLM2-135M-F16-*"):  # an earlier fixture's conversion: keep the cache bounded
        if older != out:
            older.unlink()
    return out


def test_smollm2_matches_llama_quantize(smollm2_f16: Path, smollm2_dir: Path, tmp_path: Path) -> None:
    # One recipe on the real model (Q5_0/Q8_0 fallbacks, tied Q8_0 embedding); the rest on synthetic models.
    ref, ours, direct = tmp_path / "ref.gguf", tmp_path / "ours.gguf", tmp_path / "direct.gguf"
    llama_quantize(smollm2_f16, ref, "Q4_K_M")
    assert quantcli("quantize", str(smollm2_f16), str(ours), "Q4_K_M") == 0
    assert sha256(ours) == sha256(ref)
    # From the HF checkpoint directly (one pass, planned as the converter's bf16 output; this fixture's
    # values are all F16-exact, so the f16 pipeline gives the same bytes; test_convert_quantized.py has one where not).
    assert quantcli("quantize", str(smollm2_dir), str(direct), "q4_k_m", "--json") == 0
    assert sha256(direct) == sha256(ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.gguf", "ours.gguf", "ref.gguf"]


@pytest.mark.parametrize("recipe", [r for r in ALL_RECIPES + SLOW_NUMPY_RECIPES if r != "Q4_K_M"])
def test_smollm2_every_recipe_matches_llama_quantize(smollm2_f16: Path, tmp_path: Path, recipe: str) -> None:
    """Every recipe on the real model (most of its tensors fall back: 576-wide rows), sha256 for sha256."""
    ref, ours = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    llama_quantize(smollm2_f16, ref, recipe)
    assert quantcli("quantize", str(smollm2_f16), str(ours), recipe) == 0
    assert sha256(ours) == sha256(ref), recipe


def test_plan_on_smollm2_equals_llama_quantize(
    smollm2_f16: Path, smollm2_dir: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    """`quantcli plan` lists llama-quantize's per-tensor types and fallback count, and the exact size."""
    import json

    ref = tmp_path / "ref.gguf"
    proc = llama_quantize(smollm2_f16, ref, "Q4_K_M")
    m = re.search(
        r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback quantization", proc.stdout + proc.stderr
    )
    assert m is not None
    with GGUFFile(ref) as f:
        ref_types = {name: t.type.name for name, t in f.tensors.items()}
    for source in (smollm2_f16, smollm2_dir):  # the F16 GGUF, and the HF checkpoint it came from
        capsys.readouterr()
        assert quantcli("plan", str(source), "--type", "Q4_K_M", "--json") == 0
        doc = json.loads(capsys.readouterr().out)
        assert {t["name"]: t["type"] for t in doc["tensors"]} == ref_types
        assert doc["n_fallbacks"] == int(m.group(1)) > 0
        assert doc["bytes"] == ref.stat().st_size and doc["bytes_exact"]


def test_requantize_matches(small: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "q8.gguf"
    llama_quantize(small, q8, "Q8_0")
    assert quantcli("quantize", str(q8), str(tmp_path / "refused.gguf"), "Q4_K_M") == 5
    assert not (tmp_path / "refused.gguf").exists()
    assert_same(q8, tmp_path, "Q4_K_M", "--allow-requantize")


def test_plan_predicts_size_with_imatrix(small: Path, small_imatrix: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    import json

    out = tmp_path / "out.gguf"
    capsys.readouterr()
    assert quantcli("plan", str(small), "--type", "Q4_0", "--imatrix", str(small_imatrix), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert quantcli("quantize", str(small), str(out), "Q4_0", "--imatrix", str(small_imatrix)) == 0
    assert doc["bytes"] == out.stat().st_size and doc["n_fallbacks"] == 0
    assert doc["tensor_types"]["Q4_1"] == 1  # with an imatrix, ffn_down of the first n/8 = 1 layer is Q4_1
    with GGUFFile(out) as f:
        assert {t["name"]: t["type"] for t in doc["tensors"]} == {
            n: t.type.name for n, t in f.tensors.items()
        }
        assert f.get("quantize.imatrix.file") == str(small_imatrix)
        assert f.get("quantize.imatrix.chunks_count") == 3
        assert list(f.kv)[-5:] == [
            "general.file_type",
            "quantize.imatrix.file",
            "quantize.imatrix.dataset",
            "quantize.imatrix.entries_count",
            "quantize.imatrix.chunks_count",
        ]


def test_moe_matches_with_expert_imatrix(tmp_path: Path) -> None:
    """8 experts: the n_expert == 8 rules, name-parsed layers, MXFP4_MOE, per-expert imatrix slices."""
    import numpy as np
    from test_quantize_cmd_errors import write_gguf_imatrix

    src = build_synthetic_gguf(tmp_path / "moe.gguf", n_layer=2, n_ff=256, n_vocab=320, n_expert=8)
    rng = np.random.default_rng(3)
    entries = {}
    for i in range(2):
        for name, width in (("ffn_gate_exps", 256), ("ffn_up_exps", 256), ("ffn_down_exps", 256)):
            counts = rng.integers(0, 50, size=(8, 1)).astype(np.float32)
            counts[i % 8] = 0  # an expert that saw no token: weights 1.0
            entries[f"blk.{i}.{name}.weight"] = (rng.random((8, width), dtype=np.float32) * 40, counts)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            entries[f"blk.{i}.{name}.weight"] = (
                rng.random((1, 256), dtype=np.float32) * 9,
                np.full((1, 1), 33.0),
            )
    imatrix = write_gguf_imatrix(tmp_path / "moe-imatrix.gguf", entries)
    for recipe in ("Q4_K_M", "MXFP4_MOE"):
        assert_same(src, tmp_path, recipe)
    assert_same(src, tmp_path, "Q4_K_M", "--imatrix", str(imatrix))
