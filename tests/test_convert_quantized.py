"""`quantcli convert MODEL --type RECIPE | --bits N` == `convert_hf_to_gguf.py --outtype bf16` followed by
`llama-quantize BF16.gguf OUT RECIPE`, byte for byte (sha256), made in one pass with no intermediate file.

Why `--outtype bf16` is the right reference: the fixtures are BF16 checkpoints. A bf16 intermediate keeps
every source value exactly, so llama-quantize decodes the very float32 values quantcli quantizes straight
from the checkpoint (BF16 -> F32 is exact). An f16 intermediate would round them (5 exponent bits: values
below 2^-14 become subnormal and lose mantissa bits, values above 65504 overflow), and quantizing rounded
values is a different, lossier pipeline. quantcli plans at the checkpoint's own lossless precision (bf16,
f16 or f32); `test_values_f16_cannot_hold` uses a checkpoint where f16 would round, to show it matters.

References: the converter's bf16 output is cached (tests/test_reference_converter.reference_gguf);
llama-quantize runs in a second or two per recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from tiny_models import BUILT_ARCHS

from quantcli.engine import convert_model
from quantcli.loaders.gguf import GGUFFile

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# (convert arguments, llama-quantize recipe)
SMOLLM2_CASES = [
    (("--type", "q4_k_m"), "Q4_K_M"),
    (("--bits", "8"), "Q8_0"),
    (("--type", "Q6_K"), "Q6_K"),
    (("--type", "q4_0"), "Q4_0"),
    (("--type", "q2_k"), "Q2_K"),
]
TEXT = " ".join(
    "the quick brown fox jumps over a lazy dog while seven sailors sing old songs about islands".split() * 40
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, so that peak_rss_bytes is this conversion's alone."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "quantcli", "convert", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )  # fmt: skip


def llama_quantize(src: Path, out: Path, recipe: str, *options: str) -> Path:
    from reference import tool, tool_env

    proc = subprocess.run(
        [str(tool("llama-quantize")), *options, str(src), str(out), recipe],
        capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def converter_bf16(model: Path) -> Path:
    from test_reference_converter import reference_gguf

    return reference_gguf(model, "bf16")


def synthetic_dir() -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_smollm2_fixture.py"), "--synthetic", "--print-path"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smollm2_outputs(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Path, dict]]]:
    """Each SMOLLM2_CASES conversion, run once: recipe -> (output, --json result). Every run gets its own
    empty directory, so a leftover intermediate file would be seen."""
    root = tmp_path_factory.mktemp("smol")
    outputs = {}
    for args, recipe in SMOLLM2_CASES:
        work = root / recipe
        work.mkdir()
        proc = convert_cli(str(smollm2_dir), *args, "--json", cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        out = work / f"{smollm2_dir.name}-{recipe}.gguf"  # the default output name
        assert result["output"] == str(out)
        assert sorted(p.name for p in work.iterdir()) == [out.name]  # no intermediate or temp file
        outputs[recipe] = (out, result)
    yield outputs
    shutil.rmtree(root)  # ~0.5 GB: pytest would keep module fixtures' directories until the session ends


@pytest.mark.parametrize("recipe", [r for _, r in SMOLLM2_CASES])
def test_smollm2_matches_converter_plus_llama_quantize(
    smollm2_dir: Path, smollm2_outputs: dict, tmp_path: Path, recipe: str
) -> None:
    out, result = smollm2_outputs[recipe]
    ref = llama_quantize(converter_bf16(smollm2_dir), tmp_path / "ref.gguf", recipe)
    assert out.stat().st_size == ref.stat().st_size
    assert sha256(out) == sha256(ref), f"{recipe}: differs from convert_hf_to_gguf.py --outtype bf16 + llama-quantize"
    assert result["sha256"] == sha256(out) and result["bytes"] == out.stat().st_size
    assert result["file_type"] == recipe and result["n_tensors"] == 272
    assert len(result["fallbacks"]) == result["n_fallbacks"]
    assert all(f["wanted"] != f["written"] and f["why"] for f in result["fallbacks"])
    assert result["pipeline"] == f"convert_hf_to_gguf.py --outtype bf16 + llama-quantize {recipe}"
    with GGUFFile(ref) as f:
        ref_types: dict[str, int] = {}
        for t in f.tensors.values():
            ref_types[t.type.name] = ref_types.get(t.type.name, 0) + 1
    assert result["tensor_types"] == dict(sorted(ref_types.items()))


@pytest.mark.parametrize("arch", BUILT_ARCHS)
def test_archs_q4_k_m_match_converter_plus_llama_quantize(bf16_arch_checkpoint, tmp_path: Path, arch: str) -> None:
    """The one-pass Q4_K_M of each transformers-built tiny architecture (rows of 256: real k-quants)."""
    model = bf16_arch_checkpoint(arch)
    ref = llama_quantize(converter_bf16(model), tmp_path / "ref.gguf", "Q4_K_M")
    ours = tmp_path / "ours.gguf"
    result = convert_model(model, ours, out_type="q4_k_m")
    assert sha256(ours) == sha256(ref), f"{arch}: differs from convert_hf_to_gguf.py --outtype bf16 + llama-quantize"
    assert result["sha256"] == sha256(ref) and result["tensor_types"]["Q4_K"] > 0


def test_smollm2_memory_bounded_by_largest_tensor(smollm2_dir: Path, smollm2_outputs: dict) -> None:
    """Peak RSS <= 3x the largest tensor's float32 size + 150 MB (interpreter, NumPy, tokenizer), for every
    recipe: one tensor at a time, no model-sized buffer."""
    with GGUFFile(smollm2_outputs["Q8_0"][0]) as f:
        largest = max(t.n_elements for t in f.tensors.values()) * 4
    assert largest == 49152 * 576 * 4  # token_embd: 113 MB of float32
    for recipe, (_, result) in smollm2_outputs.items():
        assert result["peak_rss_bytes"] <= 3 * largest + 150 * 2**20, (recipe, result["peak_rss_bytes"])


@pytest.mark.parametrize("recipe", ["Q8_0", "Q6_K"])
def test_smollm2_output_generates_in_llama_cpp(smollm2_outputs: dict, recipe: str) -> None:
    from reference import tool, tool_env

    out, _ = smollm2_outputs[recipe]
    proc = subprocess.run(
        [str(tool("llama-simple")), "-m", str(out), "-n", "8", "The capital of France is"],
        capture_output=True, text=True, env=tool_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paris" in proc.stdout, proc.stdout


def test_synthetic_kquants_and_imatrix_match(tmp_path: Path) -> None:
    """The synthetic llama's rows are multiples of 256, so real K-quant blocks (no fallbacks) are made; one
    recipe also with an imatrix computed by llama-imatrix (its path string is written to the file, so both
    sides get the same one)."""
    from reference import tool, tool_env

    model = synthetic_dir()
    bf16 = converter_bf16(model)
    for recipe in ("Q4_K_M", "Q3_K_S"):
        ours = tmp_path / f"ours-{recipe}.gguf"
        proc = convert_cli(str(model), "--type", recipe.lower(), "-o", str(ours), "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["n_fallbacks"] == 0
        ref = llama_quantize(bf16, tmp_path / f"ref-{recipe}.gguf", recipe)
        assert sha256(ours) == sha256(ref), recipe

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    imatrix = tmp_path / "imatrix.gguf"
    proc = subprocess.run(
        [str(tool("llama-imatrix")), "-m", str(bf16), "-f", str(text), "-o", str(imatrix), "-c", "128",
         "--chunks", "3", "--no-ppl", "-t", "2", "--output-format", "gguf"],
        capture_output=True, text=True, env=tool_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0 and imatrix.is_file(), proc.stderr[-2000:]
    ours, ref = tmp_path / "ours-im.gguf", tmp_path / "ref-im.gguf"
    proc = convert_cli(str(model), "--bits", "4", "--imatrix", "imatrix.gguf", "-o", str(ours), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["imatrix"] is not None
    proc = subprocess.run(
        [str(tool("llama-quantize")), "--imatrix", "imatrix.gguf", str(bf16), str(ref), "Q4_K_M"],
        capture_output=True, text=True, env=tool_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sha256(ours) == sha256(ref)
    assert sha256(ours) != sha256(tmp_path / "ours-Q4_K_M.gguf")  # the imatrix did change the bytes
    with GGUFFile(ours) as f:
        assert f.get("quantize.imatrix.file") == "imatrix.gguf"


def _tiny_values_variant(model: Path, out: Path) -> Path:
    """A copy of `model` whose weight matrices are scaled by 2^-16 (exact in BF16: only the exponent
    moves), so most of their values fall below F16's normal range and an F16 file would round them."""
    from quantcli.loaders import open_checkpoint
    from quantcli.writers.safetensors import write_file

    out.mkdir()
    tensors = {}
    with open_checkpoint(model) as ckpt:
        for name in ckpt.tensor_names():
            values = np.asarray(ckpt.read(name), dtype=np.float32)
            if values.ndim == 2 and "embed" not in name:
                values = values * np.float32(2.0**-16)
            tensors[name] = values.astype(ml_dtypes.bfloat16)
    write_file(out / "model.safetensors", tensors, {"format": "pt"})
    for f in model.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
            shutil.copyfile(f, out / f.name)
    return out


def test_values_f16_cannot_hold(tmp_path: Path) -> None:
    model = _tiny_values_variant(synthetic_dir(), tmp_path / "synthetic-tiny-values")
    bf16 = converter_bf16(model)
    with GGUFFile(bf16) as f:
        w = f.tensor_f32("blk.0.ffn_down.weight")
    assert np.count_nonzero(w.astype(np.float16).astype(np.float32) != w) > w.size // 2  # f16 would round
    ours = tmp_path / "ours.gguf"
    proc = convert_cli(str(model), "--type", "q4_k_m", "-o", str(ours), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = llama_quantize(bf16, tmp_path / "ref.gguf", "Q4_K_M")
    assert sha256(ours) == sha256(ref)


def test_quantize_command_on_hf_dir_is_the_same_pass(smollm2_dir: Path, smollm2_outputs: dict, tmp_path: Path) -> None:
    """`quantcli quantize DIR OUT TYPE` shares the one-pass path: same bytes as `convert --type TYPE`."""
    from quantcli.cli import main

    out = tmp_path / "q.gguf"
    with pytest.raises(SystemExit) as exc:
        main(["quantize", str(smollm2_dir), str(out), "Q6_K", "--json"])
    assert exc.value.code == 0
    assert sha256(out) == sha256(smollm2_outputs["Q6_K"][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]
