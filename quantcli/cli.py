"""The `quantcli` command: one Typer app, one module per command in quantcli/commands/.

Every command module defines `register(app)`. `main()` turns errors into one line on stderr and a
documented exit code (README.md); `--json` runs also get an error object on stdout.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import tempfile
import traceback

import click
import typer
import typer.exceptions

from quantcli import __version__
from quantcli.errors import ExitCode, QuantcliError

try:  # Typer >= 0.2x vendors its own copy of Click, whose exceptions are not click's
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older Typer raises click's own
    _TyperClickException = click.ClickException

_EXIT = (click.exceptions.Exit, typer.exceptions.Exit)
_ABORT = (click.exceptions.Abort, getattr(typer.exceptions, "Abort", click.exceptions.Abort))
_CLICK_ERROR = (click.ClickException, _TyperClickException)

COMMANDS = ["convert", "plan", "quantize", "inspect", "eval", "generate", "imatrix", "batch"]

app = typer.Typer(
    name="quantcli",
    help="Convert Hugging Face checkpoints to llama.cpp-exact quantized GGUF (and packed safetensors).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        print(f"quantcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


for _name in COMMANDS:
    importlib.import_module(f"quantcli.commands.{_name}").register(app)


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C: temp files removed, exit code 130.
    raise KeyboardInterrupt


def _emit_error(message: str, code: int, kind: str, argv: list[str] | None = None) -> None:
    print(f"error: {message}", file=sys.stderr)
    if "--json" in (sys.argv[1:] if argv is None else argv):
        print(json.dumps({"ok": False, "error": message, "error_type": kind, "exit_code": int(code)}))


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)

    def fail(message: str, code: int, kind: str) -> None:
        _emit_error(message, code, kind, argv)
        sys.exit(int(code))

    try:
        rv = app(args=argv, standalone_mode=False, prog_name="quantcli")
    except _EXIT as exc:
        sys.exit(exc.exit_code)
    except _ABORT:
        fail("interrupted", ExitCode.INTERRUPTED, "Interrupted")
    except _CLICK_ERROR as exc:
        # Usage errors: Click's own message (with the usage line) and exit code 2.
        exc.show()
        if "--json" in (sys.argv[1:] if argv is None else argv):
            print(json.dumps({"ok": False, "error": exc.format_message(), "error_type": "UsageError",
                              "exit_code": int(ExitCode.USAGE)}))
        sys.exit(ExitCode.USAGE)
    except QuantcliError as exc:
        fail(str(exc), exc.exit_code, type(exc).__name__)
    except KeyboardInterrupt:
        fail("interrupted", ExitCode.INTERRUPTED, "Interrupted")
    except BrokenPipeError:
        sys.exit(ExitCode.OK)
    except Exception as exc:  # our bug: keep the traceback, show one line
        fd, path = tempfile.mkstemp(prefix="quantcli-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {path})", ExitCode.INTERNAL, "InternalError")
    if rv == ExitCode.INTERRUPTED:  # Typer turns KeyboardInterrupt into Exit(130), returned here
        fail("interrupted", ExitCode.INTERRUPTED, "Interrupted")
    sys.exit(int(rv) if isinstance(rv, int) else 0)
