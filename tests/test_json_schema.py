"""Every command's --json against the documented schema (docs/json.md, held as data in json_schema.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import json_schema as S
import pytest
from test_batch_models import tiny_llama
from test_eval_cli import tiny_gguf_and_text
from test_plan_synthetic import build_synthetic_gguf

REPO = Path(__file__).resolve().parent.parent


def _run(*args: object, expect: int = 0, cwd: Path = REPO) -> dict:
    """Run `quantcli ARGS --json`: one JSON object on one stdout line, conforming to the schema."""
    proc = subprocess.run([sys.executable, "-m", "quantcli", *map(str, args), "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout[-3000:]
    doc = json.loads(lines[0])
    command = next(str(a) for a in args if str(a) in S.COMMANDS)
    assert S.problems(doc, command) == [], doc
    return doc


# ---- the page and the data agree ---------------------------------------------------------------------
_ROW = re.compile(r"^\| `(\w+)` \| ([\w ]+) \| (yes|no|-) \|")


def _doc_tables() -> dict[str, dict[str, tuple[str, str]]]:
    """section heading -> {key: (type, required)} for every table in docs/json.md."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    section = ""
    pending = ""  # a `tensors[]`-style label just above a table names it
    for line in (REPO / "docs" / "json.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            section, pending = line.lstrip("#").strip().lower(), ""
        elif re.fullmatch(r"`\w+\[\]`.*", line):
            pending = line.split("`")[1]
        elif m := _ROW.match(line):
            tables.setdefault(pending or section, {})[m.group(1)] = (m.group(2).replace(" or ", "|"), m.group(3))
        elif line.strip() and not line.startswith("|"):  # any other text ends a label's reach
            pending = ""
    return tables


def _expected_tables() -> dict[str, dict[str, tuple[str, str]]]:
    def req(d: dict[str, str], flag: str) -> dict[str, tuple[str, str]]:
        return {k: (v, flag) for k, v in d.items()}

    expected = {
        "envelope (every object)": req(S.ENVELOPE, "yes"),
        "errors": req(S.ERROR, "yes"),
        "shared keys": req(S.SHARED, "-"),
        "tensors[]": req(S.TENSOR_ITEM, "yes"),
        "fallbacks[]": req(S.FALLBACK_ITEM, "yes"),
        "files[]": req(S.FILE_ITEM, "yes"),
        "jobs[]": req(S.BATCH_JOB_ITEM, "yes"),
    }
    for command, spec in S.COMMANDS.items():
        expected[command] = req(spec["required"], "yes") | req(spec["optional"], "no")
    return expected


def test_docs_list_exactly_the_schema() -> None:
    assert _doc_tables() == _expected_tables()


def test_shared_keys_have_one_type_everywhere() -> None:
    for command, spec in S.COMMANDS.items():
        for key, kind in {**spec["required"], **spec["optional"]}.items():
            if key in S.SHARED:
                assert kind == S.SHARED[key], (command, key)


def test_checker_rejects_drift() -> None:
    """The checker itself fails on the drift this issue is about (plan's old keys)."""
    old_plan = {"schema": "quantcli/1", "command": "plan", "ok": True, "arch": "llama", "file_type": 15,
                "n_fallback": 0, "file_size": 1}
    found = S.problems(old_plan, "plan")
    assert any("'file_type' is 15" in p for p in found) and any("undocumented key 'arch'" in p for p in found)
    assert any("missing 'bytes'" in p for p in found)


# ---- runtime commands (tiny GGUF) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_gguf_and_text(tmp_path_factory.mktemp("tiny"))


def test_eval_json(tiny: tuple[Path, Path]) -> None:
    model, text = tiny
    ppl = _run("eval", model, "--text", text, "--ctx", 64, "--chunks", 2)
    assert ppl["source"] == str(model) and ppl["chunks"] == 2 and "ppl_uncertainty" in ppl
    kld = _run("eval", model, "--text", text, "--ctx", 64, "--chunks", 2, "--base", model)
    assert kld["base"] == str(model) and kld["tokens_scored"] == ppl["tokens_scored"]


def test_generate_json(tiny: tuple[Path, Path]) -> None:
    model, _ = tiny
    doc = _run("generate", model, "-p", "The river", "-n", 4)
    assert doc["n_tokens"] == len(doc["tokens"]) <= 4 and doc["tokens_per_second"] > 0
    assert (doc["stop"] is None) == (doc["n_tokens"] == 4)


def test_imatrix_json(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, text = tiny
    out = tmp_path / "imatrix.gguf"
    doc = _run("imatrix", model, "--text", text, "--ctx", 64, "--chunks", 1, "-o", out)
    assert doc["output"] == str(out) and doc["bytes"] == out.stat().st_size and doc["entries"] > 0


def test_error_json(tmp_path: Path) -> None:
    doc = _run("inspect", tmp_path / "absent.gguf", expect=3)
    assert doc["ok"] is False and doc["exit_code"] == 3 and doc["error_type"] == "InputMissing"


# ---- GGUF commands (synthetic GGUF, tiny HF checkpoint) ----------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic_gguf(tmp_path_factory.mktemp("synth") / "m.gguf", n_layer=1, n_ff=256, n_vocab=320)


def test_inspect_json(synthetic: Path) -> None:
    doc = _run("inspect", synthetic)
    assert doc["bytes"] == synthetic.stat().st_size and doc["format"] == "gguf"
    assert sum(doc["tensor_types"].values()) == doc["n_tensors"] == len(doc["tensors"])


def test_plan_json(synthetic: Path) -> None:
    doc = _run("plan", synthetic, "--type", "Q4_K_M")
    assert doc["file_type"] == "Q4_K_M" and doc["output"] is None and doc["bytes_exact"] is True
    assert len(doc["tensors"]) == doc["n_tensors"] and doc["n_fallbacks"] == len(doc["fallbacks"])


def test_quantize_json(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    doc = _run("quantize", synthetic, out, "Q8_0")
    assert doc["output"] == str(out) and doc["bytes"] == out.stat().st_size and doc["file_type"] == "Q8_0"
    inspected = _run("inspect", out)
    for key in ("architecture", "file_type", "bytes", "n_tensors", "tensor_types", "parameters"):
        assert doc[key] == inspected[key], key


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("hf") / "tiny", seed=5)


def test_convert_json(checkpoint: Path, tmp_path: Path) -> None:
    planned = _run("convert", checkpoint, "--bits", "8", "-o", tmp_path / "q8.gguf", "--dry-run")
    assert planned["dry_run"] is True and planned["sha256"] is None and planned["tensors"]
    doc = _run("convert", checkpoint, "--bits", "8", "-o", tmp_path / "q8.gguf")
    assert doc["file_type"] == "Q8_0" and doc["bytes"] == planned["bytes"] == (tmp_path / "q8.gguf").stat().st_size
    assert "tensors" not in doc
    packed = _run("convert", checkpoint, "--format", "ct", "--bits", "4", "--group-size", "32", "-o", tmp_path / "ct")
    assert packed["format"] == "ct" and packed["file_type"] is None and len(packed["sha256"]) == 64
    assert {f["name"] for f in packed["files"]} == {p.name for p in (tmp_path / "ct").iterdir()}


def test_batch_json(checkpoint: Path, tmp_path: Path) -> None:
    """batch --json: a line per job as it finishes (`event: job`, the job's convert result plus its status),
    then the summary (`event: summary`)."""
    manifest = tmp_path / "jobs.txt"
    manifest.write_text(f"{checkpoint} Q8_0 {tmp_path / 'b.gguf'}\n")
    proc = subprocess.run([sys.executable, "-m", "quantcli", "batch", str(manifest), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_line, summary = (json.loads(line) for line in proc.stdout.splitlines())
    assert S.problems(summary, "batch") == [], summary
    assert summary["n_jobs"] == summary["n_converted"] == 1 and summary["jobs"][0]["status"] == "converted"
    assert job_line["event"] == "job" and job_line["command"] == "batch"
    job = {k: v for k, v in job_line.items() if k not in ("status", "entry", "type", "bits", "event", "command")}
    assert S.problems({**job, "command": "convert"}, "convert") == []
