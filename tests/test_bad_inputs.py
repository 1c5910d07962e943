"""The bad-input corpus (tests/badinputs.py) through the real CLI: documented exit code, one line, no
traceback, no output or temp file, inputs untouched — and hostile headers under a memory limit.

Every case runs `quantcli.cli.main(argv)` in a forked child of this process (no interpreter start-up,
so ~150 cases take seconds) with an address-space limit of 1 GiB above what the child already maps and
an alarm: a parser that believes a lying header and allocates, or loops on a count of 2^60, dies there
instead of taking the test run down. A sample also runs as `python -m quantcli` subprocesses to prove
nothing reaches stderr but the one line (and, with --json, that the error object is on stdout).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from badinputs import CASES, Bases, Case, build_bases, run_cli_in_process

from quantcli.atomic import TEMP_MARK
from quantcli.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
ALARM_SECONDS = 10
EXTRA_ADDRESS_SPACE = 1 << 30
# Diagnostics that may precede the error line (a developer's stale C build); anything else is a failure.
ALLOWED_NOISE = ("quantcli: native quantizers disabled",)


@dataclass
class Outcome:
    code: int | None  # None: the child was killed (signal in `killed_by`)
    stdout: str
    stderr: str
    killed_by: int | None = None


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def run_forked(argv: list[str], alarm: int = ALARM_SECONDS, extra_memory: int = EXTRA_ADDRESS_SPACE) -> Outcome:
    """`quantcli ARGV` in a forked child under RLIMIT_AS (current size + extra_memory) and an alarm."""
    read_fd, write_fd = os.pipe()
    limit = _vm_size() + extra_memory
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 0
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(alarm)
            code, out, err = run_cli_in_process(argv)
            payload = json.dumps({"code": code, "stdout": out, "stderr": err}).encode()
            with os.fdopen(write_fd, "wb") as fh:
                fh.write(payload)
        except BaseException:  # noqa: BLE001 - report anything as a failure of the child itself
            status = 99
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        payload = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return Outcome(None, "", "", os.WTERMSIG(status))
    if os.WEXITSTATUS(status) != 0 or not payload:
        return Outcome(None, "", f"child harness failed with status {os.WEXITSTATUS(status)}")
    data = json.loads(payload)
    return Outcome(data["code"], data["stdout"], data["stderr"])


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every file under `roots`: (sha256, mtime_ns). Directories' own mtimes are not compared."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns)
    return state


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(ALLOWED_NOISE)]


def assert_clean_failure(case: Case, outcome: Outcome, inp: Path, out: Path, before: dict, after: dict) -> None:
    assert outcome.killed_by is None, (
        f"{case.id}: killed by signal {outcome.killed_by} (hang past {ALARM_SECONDS} s or memory limit)"
    )
    assert outcome.code in case.codes, (
        f"{case.id}: exit {outcome.code}, expected {sorted(case.codes)}\n{outcome.stderr}"
    )
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr
    assert before == after, f"{case.id}: an input file changed (bytes or mtime)"
    leftovers = [p.name for p in list(out.iterdir()) + list(inp.rglob("*")) if p.name.startswith(TEMP_MARK)]
    assert not leftovers, f"{case.id}: temporary files left: {leftovers}"
    if outcome.code == 0:  # only random damage may be harmless; then the output must be a valid file
        assert case.flips, f"{case.id}: succeeded"
        produced = list(out.iterdir())
        assert len(produced) == 1, produced
        from quantcli.loaders.gguf import GGUFFile

        with GGUFFile(produced[0]) as f:
            assert f.tensors
        return
    assert not list(out.iterdir()), f"{case.id}: output left behind: {list(out.iterdir())}"
    lines = error_lines(outcome.stderr)
    if case.category == "batch run":  # a failed batch prints its report, then the one error line
        assert lines[-1].startswith("error: ") and case.needle in lines[-1], outcome.stderr
        lines = lines[-1:]
    elif case.category == "manifest":
        # batch lists every bad entry on its own line (`entry N (...)`), then the one error line.
        assert all(line.startswith("entry ") for line in lines[:-1]), outcome.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: stderr is not one error line:\n{outcome.stderr}"
    assert outcome.code == int(ExitCode.INTERNAL) or "internal error" not in lines[0]
    assert case.needle in lines[0], f"{case.id}: error does not name {case.needle!r}: {lines[0]}"


# Imported once here, so that forked children do not each import them again (and never need the import
# machinery while another thread of this process might hold a lock at fork time).
WARM_MODULES = ("quantcli.cli", "quantcli.engine", "quantcli.engine.job", "quantcli.sources.hf", "quantcli.batch",
                "quantcli.imatrix_file", "quantcli.plan.metadata", "quantcli.runtime.model", "quantcli.runtime.hf",
                "quantcli.runtime.evaluate", "quantcli.runtime.generate", "quantcli.writers.packed", "quantcli.vocab")


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Bases:
    import importlib

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:  # a module renamed by its owner: the children import what they need
            pass
    return build_bases(tmp_path_factory.mktemp("bases"))


def _param(case: Case) -> object:
    return pytest.param(case, id=case.id)


def run_case(case: Case, bases: Bases, tmp: Path) -> tuple[Outcome, Path, Path, dict]:
    inp, out = tmp / "inp", tmp / "out"
    inp.mkdir()
    out.mkdir()
    argv = case.build(inp, out, bases)
    before = snapshot(inp, bases.root)
    return run_forked(argv), inp, out, before


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, bases: Bases, tmp_path: Path) -> None:
    outcome, inp, out, before = run_case(case, bases, tmp_path)
    assert_clean_failure(case, outcome, inp, out, before, snapshot(inp, bases.root))


def test_corpus_size() -> None:
    assert len(CASES) >= 60
    doc = (REPO / "docs" / "hardening.md").read_text()
    assert f"| **total** | **{len(CASES)}** |" in doc, "docs/hardening.md's corpus table is out of date"
    categories = {c.category.split()[0] for c in CASES}
    assert {"safetensors", "GGUF", "imatrix", "config.json", "tokenizer", "manifest", "NaN/Inf"} <= categories


# --- real subprocesses: nothing but the error line reaches stderr ---------------------------------------

SUBPROCESS_SAMPLE = [
    "st_truncated_middle_of_data", "st_header_len_2_64", "st_dtype_i16", "cfg_missing", "tok_model_garbage",
    "gguf_n_tensors_2_60", "gguf_array_count_2_50", "dat_name_length_2_31", "imatrix_gguf_no_metadata",
    "manifest_bad_yaml",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_SAMPLE)
def test_bad_input_subprocess_json(case_id: str, bases: Bases, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    inp, out = tmp_path / "inp", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    argv = case.build(inp, out, bases)
    before = snapshot(inp, bases.root)
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli", *argv, "--json"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode in case.codes, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc.stderr)
    if case.category == "manifest":
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.needle in lines[0], proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["ok"] is False and doc["exit_code"] == proc.returncode and doc["error"] == lines[0][len("error: "):]
    assert not list(out.iterdir())
    assert snapshot(inp, bases.root) == before


# --- memory limit: hostile headers in a fresh interpreter limited to 1 GiB of address space ----------------

HOSTILE_HEADERS = ["st_offsets_past_eof", "st_header_len_2_64", "gguf_n_tensors_2_60", "gguf_array_count_2_50",
                   "gguf_string_len_2_40", "gguf_tensor_offset_past_eof", "dat_value_count_2_31",
                   "imatrix_gguf_n_tensors_2_60"]
ONE_GIB = 1 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ONE_GIB, ONE_GIB))


def test_hostile_headers_under_one_gib(bases: Bases, tmp_path: Path) -> None:
    """Headers claiming 2^40..2^60 bytes/items fail with the documented code inside 1 GiB of address space.

    All cases run in one fresh interpreter (one start-up), each through quantcli.cli.main.
    """
    jobs = []
    for case_id in HOSTILE_HEADERS:
        case = next(c for c in CASES if c.id == case_id)
        inp, out = tmp_path / case_id / "inp", tmp_path / case_id / "out"
        inp.mkdir(parents=True)
        out.mkdir()
        jobs.append((case, case.build(inp, out, bases), out))
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from badinputs import run_cli_in_process\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    code, out, err = run_cli_in_process(argv)\n"
        "    print(json.dumps([code, err]), flush=True)\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([argv for _, argv, _ in jobs])], capture_output=True, text=True,
        cwd=REPO, timeout=120, preexec_fn=_limit_memory, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(jobs)
    for (case, _, out), (code, err) in zip(jobs, results, strict=True):
        assert code in case.codes, f"{case.id}: exit {code}: {err}"
        assert "MemoryError" not in err and "internal error" not in err, f"{case.id}: {err}"
        assert not list(out.iterdir())


def test_memory_limit_is_real(tmp_path: Path) -> None:
    """The limit used above does stop an allocation of 2 GiB (so passing there means something)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import numpy as np; np.ones(1 << 31, np.uint8)"], capture_output=True, text=True,
        preexec_fn=_limit_memory, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), timeout=60,
    )
    assert proc.returncode != 0 and "MemoryError" in proc.stderr


# --- internal errors (our bugs): one line naming the traceback file, exit 1 ------------------------------


def test_internal_error_names_traceback_file(bases: Bases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.loaders.safetensors import SafetensorsFile

    def broken(self: object) -> None:
        raise ZeroDivisionError("simulated bug")

    # A method on a class: found at call time whatever module imported the loader by name.
    monkeypatch.setattr(SafetensorsFile, "_parse", broken)
    out = tmp_path / "x.gguf"
    code, stdout, stderr = run_cli_in_process(["convert", str(bases.model), "-o", str(out), "--json"])
    assert code == ExitCode.INTERNAL
    lines = error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: internal error: ZeroDivisionError: simulated bug (traceback in ")
    crash = Path(lines[0].rsplit("(traceback in ", 1)[1].rstrip(")"))
    try:
        text = crash.read_text()
        assert "Traceback (most recent call last)" in text and "simulated bug" in text and "broken" in text
    finally:
        crash.unlink(missing_ok=True)
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert doc == {"schema": "quantcli/1", "command": "convert", "ok": False, "error": lines[0][len("error: "):],
                   "error_type": "InternalError", "exit_code": 1}
    assert not out.exists()


def test_no_unvalidated_gguf_reader_in_quantcli() -> None:
    """gguf.GGUFReader trusts header counts (see docs/hardening.md): quantcli reads GGUF only through
    quantcli.loaders.gguf, which bounds every count and length by the file size first."""
    offenders = [
        str(path.relative_to(REPO)) for path in (REPO / "quantcli").rglob("*.py")
        if "GGUFReader(" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_huge_sparse_imatrix_is_not_read_whole(tmp_path: Path) -> None:
    """A 4 GiB (sparse) legacy imatrix whose second entry lies: refused (exit 4) without reading 4 GiB.

    The file is memory-mapped, so the parse touches only the bytes its counts point at; the child's peak
    RSS stays far below the file size (reading it whole would need > 4 GiB).
    """
    from badinputs import NAME, dat_entry

    path = tmp_path / "huge.dat"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", 2) + dat_entry(NAME, 1, [1.0] * 64) + struct.pack("<i", 2**31 - 1) + NAME)
        fh.truncate(4 << 30)
    script = (
        "import sys\n"
        "from quantcli.console import peak_rss_bytes\n"
        "from quantcli.errors import InputInvalid\n"
        "from quantcli.imatrix_file import load_imatrix\n"
        "try:\n"
        "    load_imatrix(sys.argv[1])\n"
        "except InputInvalid as exc:\n"
        "    print('refused', exc)\n"
        "print(peak_rss_bytes())\n"  # VmHWM: ru_maxrss would include this test runner's own peak
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO,
                              timeout=120)
    finally:
        path.unlink()
    assert proc.returncode == 0, proc.stderr
    refused, peak = proc.stdout.strip().splitlines()
    assert refused.startswith("refused") and "bad name length" in refused, refused
    assert int(peak) < 1 << 30, f"peak RSS {int(peak) >> 20} MiB for a 4 GiB sparse file"
