"""Output safety under faults: disk full, SIGINT/SIGTERM/SIGKILL mid-write, unwritable output directory.

Whatever happens, the output path holds either nothing or a complete file (an existing output replaced
with --force survives an interrupted run intact), no `.quantcli-tmp-*` file is left, the exit code is the
documented one (7 output failed, 130 interrupted) with one `error:` line, and the inputs' bytes and
mtimes are unchanged. A SIGKILL cannot be trapped and leaves its temp; the next run for the same output
removes it (its owner is dead), says so on stderr and writes the same bytes; a live owner's temp, another
host's and another output's are left alone.

Decisions (docs/hardening.md, "Faults"):
* Disk full is simulated with RLIMIT_FSIZE in the child (Python ignores SIGXFSZ, and we set SIG_IGN
  explicitly, so a write past the limit fails with EFBIG) — works everywhere, no privileges — and, where
  `mount` is permitted (root with CAP_SYS_ADMIN, as here), with a real 64 KiB tmpfs (ENOSPC).
* A read-only directory: root ignores permission bits, so chmod 555 proves nothing when run as root.
  We use a read-only tmpfs mount (EROFS applies to root too) when mount works, chmod 555 when not root,
  and otherwise skip; plus a missing parent directory, which needs nothing. The write path itself
  (not only the up-front `os.access` check) is tested by making `os.access` answer "writable".
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from badinputs import run_cli_in_process
from test_batch_models import tiny_llama
from test_plan_synthetic import build_synthetic_gguf

from quantcli.atomic import TEMP_MARK, temp_path_for
from quantcli.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
NOISE = ("quantcli: native quantizers disabled",)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_MARK)] if directory.is_dir() else []


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(NOISE)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def cli(argv: list[str], *, preexec=None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return subprocess.run([sys.executable, "-m", "quantcli", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=300, preexec_fn=preexec, env=env)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("faults") / "tiny", seed=1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~6M parameters: a NumPy Q4_K_M run takes seconds, long enough to interrupt mid-write."""
    return build_synthetic_gguf(tmp_path_factory.mktemp("faults-synth") / "synth-f16.gguf", n_layer=8, seed=2)


# --- disk full ---------------------------------------------------------------------------------------------

FSIZE_LIMIT = 64 * 1024


def _small_fsize() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@pytest.mark.parametrize("command", ["convert", "quantize"])
def test_disk_full_rlimit_fsize(command: str, model: Path, synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    source = model if command == "convert" else synthetic
    argv = (["convert", str(model), "-o", str(out), "--type", "q8_0"] if command == "convert"
            else ["quantize", str(synthetic), str(out), "Q8_0"])
    before = snapshot(source)
    proc = cli(argv, preexec=_small_fsize)
    assert proc.returncode == ExitCode.OUTPUT_FAILED, proc.stderr
    assert one_error_line(proc.stderr) == f"error: cannot write {out}: File too large"
    assert not out.exists() and not temp_files(tmp_path)
    assert snapshot(source) == before


def test_disk_full_message_gives_the_reason(model: Path, tmp_path: Path) -> None:
    """The one line says why (EFBIG here), not only how many bytes numpy's tofile managed to write."""
    out = tmp_path / "out.gguf"
    proc = cli(["convert", str(model), "-o", str(out), "--type", "q8_0"], preexec=_small_fsize)
    assert proc.returncode == ExitCode.OUTPUT_FAILED
    assert "too large" in one_error_line(proc.stderr).lower()


def _mount_tmpfs(target: Path, options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        if not _mount_tmpfs(target, options):
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def test_disk_full_tmpfs(model: Path, tmpfs, tmp_path: Path) -> None:  # noqa: ANN001
    small = tmpfs("small", "size=64k")
    out = small / "out.gguf"
    before = snapshot(model)
    proc = cli(["convert", str(model), "-o", str(out), "--type", "q8_0"])
    assert proc.returncode == ExitCode.OUTPUT_FAILED, proc.stderr
    line = one_error_line(proc.stderr)
    assert line == f"error: cannot write {out}: No space left on device", line
    assert list(small.iterdir()) == []  # neither the output nor a temp file
    assert snapshot(model) == before


# --- unwritable output directory ---------------------------------------------------------------------------


def test_output_parent_missing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "out.gguf"
    code, _, err = run_cli_in_process(["convert", str(model), "-o", str(out), "--type", "q8_0"])
    assert code == ExitCode.OUTPUT_FAILED
    assert "does not exist" in one_error_line(err)
    assert not (tmp_path / "no").exists()


def _read_only_dir(tmp_path: Path, tmpfs) -> Path:  # noqa: ANN001
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o555)
        return directory
    return tmpfs("ro", "ro,size=64k")


def test_read_only_output_dir(model: Path, tmp_path: Path, tmpfs) -> None:  # noqa: ANN001
    directory = _read_only_dir(tmp_path, tmpfs)
    out = directory / "out.gguf"
    before = snapshot(model)
    code, _, err = run_cli_in_process(["convert", str(model), "-o", str(out), "--type", "q8_0"])
    assert code == ExitCode.OUTPUT_FAILED, err
    assert "not writable" in one_error_line(err)
    assert list(directory.iterdir()) == []
    assert snapshot(model) == before


def test_read_only_output_dir_fails_at_write_time(model: Path, synthetic: Path, tmp_path: Path, tmpfs,  # noqa: ANN001
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """If the up-front check is fooled (os.access says yes), the write itself fails cleanly with exit 7."""
    directory = _read_only_dir(tmp_path, tmpfs)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    for argv in (["convert", str(model), "-o", str(directory / "a.gguf"), "--type", "q8_0"],
                 ["quantize", str(synthetic), str(directory / "b.gguf"), "Q8_0"]):
        code, _, err = run_cli_in_process(argv)
        assert code == ExitCode.OUTPUT_FAILED, err
        assert "cannot write" in one_error_line(err)
        assert list(directory.iterdir()) == []


# --- SIGINT / SIGTERM mid-write ----------------------------------------------------------------------------


def interrupt_mid_write(argv: list[str], out_dir: Path, sig: int, env: dict[str, str] | None = None,
                        limit: float = 240.0) -> tuple[int, str, int]:
    """Start `quantcli ARGV`, wait for its temp file to have data, send `sig`; (exit code, stderr, temp size)."""
    proc = subprocess.Popen([sys.executable, "-m", "quantcli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + limit
    size_at_signal = -1
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            temps = [p for p in out_dir.iterdir() if p.name.startswith(TEMP_MARK)]
            if temps:
                try:
                    size_at_signal = temps[0].stat().st_size
                except FileNotFoundError:
                    size_at_signal = -1
                if size_at_signal > 0:
                    proc.send_signal(sig)
                    break
            time.sleep(0.005)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr, size_at_signal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_quantize(sig: int, synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    previous = b"a complete earlier output"
    if sig == signal.SIGTERM:  # --force over an existing output: the old file must survive the interrupt
        out.write_bytes(previous)
    before = snapshot(synthetic)
    env = dict(os.environ, QUANTCLI_NATIVE="0")  # NumPy K-quants: slow enough to be caught mid-write
    code, stderr, size = interrupt_mid_write(["quantize", str(synthetic), str(out), "Q4_K_M", "--force"],
                                             tmp_path, sig, env)
    assert size > 0, f"the temp file never appeared (exit {code}): {stderr}"
    assert code == ExitCode.INTERRUPTED, stderr
    assert one_error_line(stderr) == "error: interrupted"
    assert not temp_files(tmp_path)
    if sig == signal.SIGTERM:
        assert out.read_bytes() == previous
    else:
        assert not out.exists()
    assert snapshot(synthetic) == before


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random llama with 256-wide rows (K-quants without fallbacks) and the tiny SPM tokenizer."""
    from test_batch_models import SPM_VOCAB, spm_model
    from tiny_models import make_tiny_llama

    directory = make_tiny_llama(tmp_path_factory.mktemp("faults-medium") / "medium", hidden=256, layers=12,
                                ff=1536, vocab=SPM_VOCAB, seed=4)
    (directory / "tokenizer.model").write_bytes(spm_model())
    return directory


def test_sigterm_mid_convert(medium_model: Path, tmp_path: Path) -> None:
    """One-pass HF -> Q4_K_M GGUF (NumPy K-quants) interrupted while its temp file grows."""
    out = tmp_path / "medium.gguf"
    before = snapshot(medium_model)
    env = dict(os.environ, QUANTCLI_NATIVE="0")
    code, stderr, size = interrupt_mid_write(["convert", str(medium_model), "-o", str(out), "--type", "Q4_K_M"],
                                             tmp_path, signal.SIGTERM, env)
    assert size > 0, f"the temp file never appeared (exit {code}): {stderr}"
    assert code == ExitCode.INTERRUPTED, stderr
    assert one_error_line(stderr) == "error: interrupted"
    assert not out.exists() and not temp_files(tmp_path)
    assert snapshot(medium_model) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_convert_smollm2(sig: int, smollm2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "smol.gguf"
    before = snapshot(smollm2_dir)
    env = dict(os.environ, QUANTCLI_NATIVE="0")
    code, stderr, size = interrupt_mid_write(["convert", str(smollm2_dir), "-o", str(out), "--type", "q8_0"],
                                             tmp_path, sig, env)
    assert size > 0, f"the temp file never appeared (exit {code}): {stderr}"
    assert code == ExitCode.INTERRUPTED, stderr
    assert one_error_line(stderr) == "error: interrupted"
    assert not out.exists() and not temp_files(tmp_path)
    assert snapshot(smollm2_dir) == before


# --- SIGKILL: the next run removes what the killed one left ------------------------------------------------

STALE_LINE = re.compile(r"quantcli: removed stale partial output (.+) \([0-9.]+ (?:bytes|kB|MB|GB)\) "
                        r"left by a killed run \(pid ([0-9]+)\)")


def removed_temps(stderr: str) -> list[tuple[str, int]]:
    """(temp name, pid) of each stale-output line; every other stderr line is a progress line or noise."""
    return [(Path(m[1]).name, int(m[2])) for m in map(STALE_LINE.fullmatch, stderr.splitlines()) if m]


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): p.read_bytes() for p in files}


@pytest.mark.parametrize("command", ["convert", "quantize", "packed"])
def test_sigkill_leaves_a_temp_the_next_run_removes(command: str, medium_model: Path, synthetic: Path,
                                                   tmp_path: Path) -> None:
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_dir.mkdir()
    clean_dir.mkdir()

    name = "out-ct" if command == "packed" else "out.gguf"

    def argv(directory: Path) -> list[str]:
        out = directory / name
        return {"convert": ["convert", str(medium_model), "-o", str(out), "--type", "Q4_K_M"],
                "quantize": ["quantize", str(synthetic), str(out), "Q4_K_M"],
                "packed": ["convert", str(medium_model), "-o", str(out), "--format", "ct", "--bits", "4"]}[command]

    slow = dict(os.environ, QUANTCLI_NATIVE="0")  # NumPy quantizers: slow enough to be caught mid-write
    code, stderr, size = interrupt_mid_write(argv(killed_dir), killed_dir, signal.SIGKILL, slow)
    assert code == -signal.SIGKILL, f"exit {code}, temp size {size}: {stderr}"
    (stale,) = temp_files(killed_dir)  # nothing ran to remove it
    assert not (killed_dir / name).exists()

    rerun = cli(argv(killed_dir))
    assert rerun.returncode == 0, rerun.stderr
    assert [name for name, _ in removed_temps(rerun.stderr)] == [stale]
    assert temp_files(killed_dir) == []
    clean = cli(argv(clean_dir))
    assert clean.returncode == 0, clean.stderr
    assert removed_temps(clean.stderr) == []
    assert list(tree_bytes(killed_dir).values()) == list(tree_bytes(clean_dir).values())
    assert [Path(k).name for k in tree_bytes(killed_dir)] == [Path(k).name for k in tree_bytes(clean_dir)]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def tiny_gguf_and_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import test_eval_cli

    return test_eval_cli.tiny_gguf_and_text(tmp_path_factory.mktemp("faults-imatrix"))


@pytest.mark.parametrize("command", ["convert", "convert-resume", "quantize", "packed", "imatrix"])
def test_only_temps_of_dead_owners_on_this_host_are_removed(command: str, model: Path, synthetic: Path,
                                                           tiny_gguf_and_text: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / ("out-mlx" if command == "packed" else "out.gguf")
    gguf, text = tiny_gguf_and_text
    argv = {"convert": ["convert", str(model), "-o", str(out), "--type", "q8_0"],
            "convert-resume": ["convert", str(model), "-o", str(out), "--type", "q8_0", "--resume"],
            "quantize": ["quantize", str(synthetic), str(out), "Q8_0"],
            "packed": ["convert", str(model), "-o", str(out), "--format", "mlx", "--bits", "4"],
            "imatrix": ["imatrix", str(gguf), "--text", str(text), "--ctx", "64", "--chunks", "1", "-o", str(out)],
            }[command]
    gone = dead_pid()
    stale = temp_path_for(out, pid=gone)
    ours = stale.name[len(TEMP_MARK):].split("-")[0]
    live = temp_path_for(out, pid=os.getpid())
    other_host = stale.with_name(TEMP_MARK + ("0" if ours != "0" * 8 else "1") * 8 + stale.name[len(TEMP_MARK) + 8:])
    other_output = temp_path_for(tmp_path / f"other-{out.name}", pid=gone)  # its name ends with "-out.gguf" too
    for temp in (stale, live, other_host, other_output):
        if command == "packed":
            temp.mkdir()
            (temp / "model.safetensors").write_bytes(b"\0" * 3000)
        else:
            temp.write_bytes(b"\0" * 3000)

    proc = cli(argv)
    assert proc.returncode == 0, proc.stderr
    assert removed_temps(proc.stderr) == [(stale.name, gone)]
    assert f"({3000 / 1e3:.1f} kB)" in proc.stderr
    assert sorted(temp_files(tmp_path)) == sorted(t.name for t in (live, other_host, other_output))
    assert out.exists()
