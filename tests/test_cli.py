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
