"""The command-line shell: usage errors, --json error objects, version."""

from __future__ import annotations

import json
import subprocess
import sys


def quantcli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantcli", *args], capture_output=True, text=True, timeout=120)


def test_unknown_option_is_a_usage_error() -> None:
    proc = quantcli("convert", "somewhere", "--nosuch")
    assert proc.returncode == 2
    assert "No such option: --nosuch" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_error_json_object() -> None:
    proc = quantcli("convert", "somewhere", "--nosuch", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout) == {
        "schema": "quantcli/1", "command": "convert",
        "ok": False, "error": "No such option: --nosuch", "error_type": "UsageError", "exit_code": 2,
    }


def test_missing_input_json_object(tmp_path) -> None:
    proc = quantcli("convert", str(tmp_path / "absent"), "--json")
    assert proc.returncode == 3
    err = json.loads(proc.stdout)
    assert err["ok"] is False and err["exit_code"] == 3 and err["error_type"] == "InputMissing"
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_version() -> None:
    from quantcli import __version__

    proc = quantcli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"quantcli {__version__}"


COMMANDS = ["convert", "plan", "quantize", "inspect", "eval", "generate", "imatrix", "batch"]
# Modules `--help` and `--version` must not load: each costs start-up time no help text needs.
HEAVY = ("numpy", "gguf", "rich", "huggingface_hub", "tokenizers", "ml_dtypes", "yaml", "click",
         "quantcli.runtime", "quantcli.plan", "quantcli.loaders", "quantcli.quants", "quantcli.writers")


def _loaded_modules(*args: str) -> set[str]:
    code = (
        "import sys\n"
        f"sys.argv = ['quantcli', *{list(args)!r}]\n"
        "from quantcli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(sys.modules), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(line for line in proc.stderr.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def test_help_and_version_import_nothing_heavy() -> None:
    for args in (["--help"], ["--version"], ["convert", "--help"], ["inspect", "--help"], ["quantize", "--help"]):
        loaded = _loaded_modules(*args)
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
        assert heavy == [], (args, heavy)


def test_help_is_plain() -> None:
    for command in COMMANDS:
        proc = quantcli(command, "--help")
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        # Plain metavars only: no Typer type labels, no braces, no markdown, no unshipped spec sections.
        for bad in ("<path>", "<str>", "<int", "<list[", "{", "`", "spec §", "section"):
            assert bad not in text, (command, bad)
        usage = text.splitlines()[0]
        assert usage.startswith(f"Usage: quantcli {command} [OPTIONS]") and usage == usage.rstrip(), usage
    usages = {c: quantcli(c, "--help").stdout.splitlines()[0] for c in ("convert", "plan", "inspect", "quantize")}
    assert usages["convert"].endswith(" MODEL") and usages["plan"].endswith(" MODEL")
    assert usages["inspect"].endswith(" FILE") and usages["quantize"].endswith(" INPUT OUTPUT [TYPE]")  # TYPE: none with a size target
    convert = quantcli("convert", "--help").stdout
    assert "-o, --output PATH" in convert and "--tensor-type REGEX=TYPE" in convert
    assert "trailing /" in " ".join(convert.split())  # -o DIR/ puts the default-named output there


def test_plan_table_goes_to_stdout(tmp_path) -> None:
    """`quantcli plan F | grep attn_v` finds the rows: the table is the result, on stdout, unwrapped."""
    from test_plan_synthetic import build_synthetic_gguf

    src = build_synthetic_gguf(tmp_path / "m.gguf", n_layer=2, n_ff=256,
                               n_vocab=320)
    proc = quantcli("plan", str(src), "--type", "Q4_K_M")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "attn_v.weight" in line]
    assert len(rows) == 2 and all("Q4_K" in r or "Q6_K" in r for r in rows), proc.stdout
    assert str(src) in proc.stdout  # the path in the title is printed whole
