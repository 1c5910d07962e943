"""Manifest parsing and validation: every bad entry is reported before any job starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.batch import Job, ManifestInvalid, load_manifest

REPO = Path(__file__).resolve().parent.parent


def _model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return directory


def test_yaml_list_types_crossed_and_output_templates(tmp_path: Path) -> None:
    _model(tmp_path / "models" / "alpha")
    _model(tmp_path / "models" / "beta")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        "output_dir: out\n"
        "jobs:\n"
        "  - source: models/alpha\n"
        "    types: [q8_0, Q4_K_M]\n"
        "  - source: models/beta\n"
        "    type: q4_0\n"
        "    output: special/beta.gguf\n"
        "  - {source: models/beta, format: ct, bits: 4, output: '{name}-ct{bits}'}\n"
        "  - {source: models/alpha, bits: 6}\n"
        "  - {source: org/remote-model@v1.0, type: q8_0}\n"
    )
    jobs = load_manifest(manifest)
    out = tmp_path / "out"
    assert [(j.entry, j.type, j.format, j.bits, Path(j.output)) for j in jobs] == [
        (1, "q8_0", "gguf", None, out / "alpha-Q8_0.gguf"),
        (1, "q4_k_m", "gguf", None, out / "alpha-Q4_K_M.gguf"),
        (2, "q4_0", "gguf", None, out / "special" / "beta.gguf"),
        (3, "ct-4bit", "ct", 4, out / "beta-ct4"),
        (4, "q6_k", "gguf", 6, out / "alpha-Q6_K.gguf"),
        (5, "q8_0", "gguf", None, out / "remote-model-Q8_0.gguf"),
    ]
    assert jobs[0].source == str((tmp_path / "models" / "alpha").resolve())
    assert jobs[5].source == "org/remote-model@v1.0"  # hub ids stay ids (resolved inside the job)
    assert Job.from_dict(jobs[3].to_dict()) == jobs[3]
    assert jobs[3].convert_options() == {"type": "ct-4bit", "format": "ct", "bits": 4}


def test_models_crossed_with_types(tmp_path: Path) -> None:
    _model(tmp_path / "a")
    _model(tmp_path / "b")
    manifest = tmp_path / "m.yml"
    manifest.write_text("models: [a, b]\ntypes: [q8_0, q4_0, f16]\n")
    jobs = load_manifest(manifest, output_dir=tmp_path / "o")
    assert sorted(Path(j.output).name for j in jobs) == sorted(
        f"{m}-{t}.gguf" for m in "ab" for t in ("Q8_0", "Q4_0", "F16"))
    assert all(Path(j.output).parent == tmp_path / "o" for j in jobs)


def test_text_manifest_and_default_types(tmp_path: Path) -> None:
    _model(tmp_path / "a")
    _model(tmp_path / "b")
    manifest = tmp_path / "models.txt"
    manifest.write_text("# model list\na q8_0,q4_0\n\nb   # no type: --types applies\na q6_k a6.gguf\n")
    jobs = load_manifest(manifest, types=["q5_0"])
    assert [(j.entry, j.type, Path(j.output).name) for j in jobs] == [
        (2, "q8_0", "a-Q8_0.gguf"), (2, "q4_0", "a-Q4_0.gguf"), (4, "q5_0", "b-Q5_0.gguf"), (5, "q6_k", "a6.gguf")]
    # without a type anywhere, a GGUF job keeps the source precision
    assert load_manifest(manifest)[2].type == "auto"


def test_every_bad_entry_is_reported(tmp_path: Path) -> None:
    _model(tmp_path / "a")
    (tmp_path / "noconfig").mkdir()
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "jobs:\n"
        "  - {source: a, type: q8_0, output: same.gguf}\n"  # 1 ok by itself
        "  - {source: missing-dir/x/y, type: q8_0}\n"  # 2 missing source
        "  - {source: a, type: q9_z}\n"  # 3 unknown type
        "  - {source: a, type: q4_0, output: same.gguf}\n"  # 4 duplicate output of 1
        "  - {type: q8_0}\n"  # 5 no source
        "  - {source: a, format: exl2, bits: 4}\n"  # 6 unknown format
        "  - {source: a, format: gptq, bits: 3}\n"  # 7 bits not available
        "  - {source: a, type: q8_0, bits: 8}\n"  # 8 both
        "  - {source: a, types: [q8_0, q4_0], output: one.gguf}\n"  # 9 one output for two types
        "  - {source: a, tpye: q8_0}\n"  # 10 typo
        "  - {source: noconfig, type: q8_0}\n"  # 11 not a checkpoint
        "  - just-a-string\n"  # 12
    )
    with pytest.raises(ManifestInvalid) as info:
        load_manifest(manifest)
    by_entry: dict[int, str] = {}
    for p in info.value.problems:
        by_entry[p.entry] = by_entry.get(p.entry, "") + p.error + "; "
    assert sorted(by_entry) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "no such file or directory" in by_entry[2]
    assert "unknown quantization type 'q9_z'" in by_entry[3]
    assert "also the output of entry 1" in by_entry[4]
    assert "missing `source:`" in by_entry[5]
    assert "unknown format 'exl2'" in by_entry[6]
    assert "--format gptq supports --bits 4, 8, not 3" in by_entry[7]
    assert "give one of" in by_entry[8]
    assert "put {type} in it" in by_entry[9]
    assert "unknown key(s): tpye" in by_entry[10]
    assert "no config.json" in by_entry[11]
    assert "an entry is a mapping" in by_entry[12]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "quantcli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_reports_entries_and_starts_nothing(tmp_path: Path) -> None:
    _model(tmp_path / "a")
    manifest = tmp_path / "jobs.txt"
    manifest.write_text("a q8_0\nnope/not/here q8_0\na q7_7\n")
    proc = _cli("batch", str(manifest), "--json", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(d.get("entry"), d["ok"]) for d in lines[:2]] == [(2, False), (3, False)]
    assert "unknown quantization type 'q7_7'" in lines[1]["error"]
    assert lines[-1]["error_type"] == "ManifestInvalid"
    assert "entry 2" in proc.stderr and "entry 3" in proc.stderr
    assert not list(tmp_path.glob("*.gguf*"))  # nothing was started


def test_cli_dry_run_lists_jobs(tmp_path: Path) -> None:
    _model(tmp_path / "a")
    (tmp_path / "m.yaml").write_text("models: [a]\ntypes: [q8_0, q4_0]\n")
    proc = _cli("batch", "m.yaml", "--dry-run", "--json", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    planned = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(p["status"], Path(p["output"])) for p in planned] == [
        ("planned", tmp_path / "out" / "a-Q8_0.gguf"), ("planned", tmp_path / "out" / "a-Q4_0.gguf")]


def test_cli_missing_manifest(tmp_path: Path) -> None:
    proc = _cli("batch", "nothere.yaml", cwd=tmp_path)
    assert proc.returncode == 3
    assert "manifest not found" in proc.stderr
