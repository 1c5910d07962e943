"""`quantcli convert` options: refused combinations (one line, right exit code, nothing written), --strict,
--dry-run (the plan and the exact size), llama-quantize overrides, --resume, --threads, Hub-style default
names, and packed outputs (--format, --group-size, --max-shard-size)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from test_convert_quantized import converter_bf16, llama_quantize, sha256, synthetic_dir

from quantcli.cli import main
from quantcli.loaders.gguf import GGUFFile

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    saved = sys.argv
    sys.argv = ["quantcli", *argv]  # the CLI's error object goes to stdout when its argv has --json
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = saved
    cap = capsys.readouterr()
    return code, cap.out, cap.err


REFUSED = [
    (("--bits", "7"), 2),
    (("--type", "q4_k_m", "--bits", "4"), 2),
    (("--type", "q9_k"), 5),
    (("--format", "ct", "--bits", "3"), 5),
    (("--format", "mlx", "--bits", "4", "--imatrix", "im.gguf"), 5),
    (("--format", "gptq"), 2),
    (("--format", "gguf5", "--bits", "4"), 5),
    (("--format", "ct", "--bits", "4", "--group-size", "96"), 5),
    (("--format", "ct", "--bits", "4", "--max-shard-size", "lots"), 2),
    (("--format", "mlx", "--bits", "4", "--type", "q4_k_m"), 2),
    (("--bits", "4", "--group-size", "64"), 2),
    (("--type", "q8_0", "--imatrix", "im.gguf"), 2),
    (("--type", "bf16", "--tensor-type", "attn_v=q8_0"), 2),
    (("--bits", "4", "--max-kld", "0.2"), 2),
    (("--bits", "4", "--verify", "--dry-run"), 2),
    (("--bits", "4", "--tensor-type", "no_such_tensor=q8_0"), 2),
    (("--bits", "4", "--output-tensor-type", "q7_x"), 5),
    (("--bits", "4", "--imatrix", "missing.gguf"), 3),
    (("--type", "q2_k_s", "--dry-run"), 2),  # a dry run makes the real run's checks: Q2_K_S needs an imatrix
]


@pytest.mark.parametrize(("args", "code"), REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_before_any_work(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...], code: int,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    got, out, err = run(capsys, "convert", str(smollm2_dir), *args, "--json")
    assert got == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert json.loads(out)["exit_code"] == code
    assert list(tmp_path.iterdir()) == []  # no output, no temp file


def test_strict_refuses_fallbacks(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # SmolLM2's rows (576) are not a multiple of 256: Q4_K_M falls back on 180 tensors.
    code, out, err = run(capsys, "convert", str(smollm2_dir), "--bits", "4", "--strict", "--json")
    assert code == 8 and "180 tensor(s) need a fallback type" in err
    assert json.loads(out)["error_type"] == "FallbackRefused"
    code, _, _ = run(capsys, "convert", str(smollm2_dir), "--bits", "4", "--strict", "--dry-run")
    assert code == 8
    assert list(tmp_path.iterdir()) == []
    # The synthetic model's rows are multiples of 256: nothing to refuse.
    code, out, _ = run(capsys, "convert", str(synthetic_dir()), "--bits", "4", "--strict", "--json")
    assert code == 0 and json.loads(out)["n_fallbacks"] == 0


def test_dry_run_lists_every_tensor_and_the_exact_size(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for args, expected_fallbacks in ((("--bits", "4"), 180), (("--type", "q8_0"), 0)):
        code, out, _ = run(capsys, "convert", str(smollm2_dir), *args, "--dry-run", "--json")
        assert code == 0
        plan = json.loads(out)
        assert plan["dry_run"] and list(tmp_path.iterdir()) == []  # nothing written
        assert plan["n_tensors"] == len(plan["tensors"]) == 272
        assert plan["n_fallbacks"] == expected_fallbacks == sum(t["fell_back"] for t in plan["tensors"])
        for t in plan["tensors"]:
            assert {"name", "shape", "src_type", "type", "reason", "fell_back", "fallback_from", "bytes"} <= set(t)
            assert t["reason"] and (t["fallback_from"] is not None) == t["fell_back"]
        code, out, _ = run(capsys, "convert", str(smollm2_dir), *args, "-o", "real.gguf", "--json")
        assert code == 0
        result = json.loads(out)
        assert plan["bytes"] == result["bytes"] == (tmp_path / "real.gguf").stat().st_size
        with GGUFFile(tmp_path / "real.gguf") as f:
            written = {name: t.type.name for name, t in f.tensors.items()}
        assert {t["name"]: t["type"] for t in plan["tensors"]} == written
        assert plan["tensor_bytes"] == sum(t["bytes"] for t in plan["tensors"])
        (tmp_path / "real.gguf").unlink()
    # Without --json: the table (the result) on stdout, nothing written.
    code, out, err = run(capsys, "convert", str(smollm2_dir), "--bits", "4", "--dry-run")
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert "blk.0.ffn_down.weight" in out and "Q4_K -> Q5_0" in out and "105,454,176 bytes" in out


def test_overrides_match_llama_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = synthetic_dir()
    bf16 = converter_bf16(model)
    options = ("--tensor-type", "attn_v=q8_0", "--token-embedding-type", "q4_k", "--output-tensor-type", "q5_k")
    for recipe, extra in (("Q4_K_M", options), ("Q3_K_M", ("--pure",)), ("Q4_K_S", ("--leave-output-tensor",))):
        ours = tmp_path / f"ours-{recipe}.gguf"
        code, _, err = run(capsys, "convert", str(model), "--type", recipe, *extra, "-o", str(ours), "--json")
        assert code == 0, err
        ref = llama_quantize(bf16, tmp_path / f"ref-{recipe}.gguf", recipe, *extra)
        assert sha256(ours) == sha256(ref), (recipe, extra)


def test_resume_after_interruption_and_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantcli.engine import convert_model

    model = synthetic_dir()
    clean = tmp_path / "clean.gguf"
    code, out, _ = run(capsys, "convert", str(model), "--bits", "4", "-o", str(clean), "--json", "--threads", "1")
    assert code == 0
    expected = json.loads(out)["sha256"]

    target = tmp_path / "out.gguf"
    written: list[bool] = []

    def stop_after_30(tensor, index: int, total: int) -> None:  # noqa: ANN001
        written.append(tensor.type.name not in ("F32", "F16", "BF16"))  # quantized (from the BF16 source)
        if index == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_model(model, target, bits=4, resume=True, on_tensor=stop_after_30)
    assert not target.exists()
    done = sum(written)
    assert 0 < done
    code, out, _ = run(capsys, "convert", str(model), "--bits", "4", "-o", str(target), "--resume", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["sha256"] == expected == sha256(target)
    assert result["tensor_cache"]["hits"] == done
    assert result["tensor_cache"]["misses"] == result["n_quantized"] - done
    assert not (tmp_path / "out.gguf.quantcli-cache").exists()  # discarded once complete


def test_hub_id_names_the_default_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantcli.hub

    model = synthetic_dir()
    monkeypatch.setattr(quantcli.hub, "resolve_source", lambda source: model)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "convert", "some-org/Tiny-Model", "--bits", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["output"] == str(tmp_path / "Tiny-Model-Q4_K_M.gguf")
    code, out, err = run(capsys, "convert", "some-org/Tiny-Model", "--format", "mlx", "--bits", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["output"] == str(tmp_path / "Tiny-Model-MLX-4bit")


def _safetensors_data_bytes(directory: Path) -> int:
    total = 0
    for f in directory.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def test_packed_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.loaders import open_checkpoint

    model = synthetic_dir()
    monkeypatch.chdir(tmp_path)
    # mlx: default group 64, default directory name; read back dequantized close to the source
    code, out, err = run(capsys, "convert", str(model), "--format", "mlx", "--bits", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    out_dir = tmp_path / f"{model.name}-MLX-4bit"
    assert result["output"] == str(out_dir) and result["group_size"] == 64 and result["format"] == "mlx"
    assert result["n_quantized"] == 56 and result["n_tensors"] == 75
    with open_checkpoint(model) as src, open_checkpoint(out_dir) as back:
        name = "model.layers.0.mlp.down_proj.weight"
        a, b = np.asarray(src.read(name), np.float32), np.asarray(back.read(name), np.float32)
        assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.25 * np.abs(a).max()

    # gptq: default group 128; --max-shard-size splits into shards with an index; dry run = tensor bytes
    code, out, _ = run(capsys, "convert", str(model), "--format", "gptq", "--bits", "4", "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["group_size"] == 128 and len(plan["tensors"]) == 75
    code, out, err = run(
        capsys, "convert", str(model), "--format", "gptq", "--bits", "4", "--max-shard-size", "30MB", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    out_dir = Path(result["output"])
    shards = sorted(f["name"] for f in result["files"] if f["name"].endswith(".safetensors"))
    assert len(shards) >= 2 and "model.safetensors.index.json" in {f["name"] for f in result["files"]}
    assert all((out_dir / f).stat().st_size <= 30_000_000 for f in shards)
    assert _safetensors_data_bytes(out_dir) == plan["tensor_bytes"]
    digest = hashlib.sha256()
    for f in sorted(f["name"] for f in result["files"]):
        digest.update((out_dir / f).read_bytes())
    assert digest.hexdigest() == result["sha256"]
    # an existing directory is refused without --force
    code, _, err = run(capsys, "convert", str(model), "--format", "gptq", "--bits", "4", "-o", str(out_dir))
    assert code == 6
