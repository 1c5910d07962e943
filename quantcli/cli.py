"""The `quantcli` command: one Typer app, one module per command in quantcli/commands/.

Every command module defines `register(app)`. `main()` turns errors into one line on stderr and a
documented exit code (README.md); `--json` runs also get an error object on stdout (docs/json.md).

Start-up cost: `quantcli --help` and `--version` import Typer and the command modules only. Command
modules import numpy, rich, the runtime and the engine inside the command function, and help is
formatted by Typer's plain (Click) formatter: its rich/markdown formatter alone costs more import time
than the whole plain `--help`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import sys
import tempfile
import traceback
from typing import Any

import typer
import typer.exceptions
from typer import _click
from typer.core import TyperCommand

from quantcli import __version__
from quantcli.console import json_doc
from quantcli.errors import ExitCode, QuantcliError

# Typer >= 0.29 vendors its own Click (typer._click, pinned in pyproject.toml): its exceptions are the
# ones raised here, and importing the separate `click` package would only cost start-up time.
_EXIT = typer.exceptions.Exit
_ABORT = typer.exceptions.Abort
_CLICK_ERROR = _click.exceptions.ClickException

# OpenBLAS's idle worker threads spin after each parallel matrix product (2**28 cycles by default, read once
# when NumPy loads OpenBLAS, hence here, before any command imports NumPy). In the runtime that spinning
# takes the cores from the attention and elementwise threads working between products: an 8-chunk eval of
# SmolLM2 F16 on 2 cores took 10.9-12.4 s and 20-23 s of CPU with it, 9.7 s and 17 s with 2**4 cycles. A
# value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

COMMANDS = ["convert", "plan", "quantize", "inspect", "eval", "generate", "imatrix", "batch", "sweep"]

app = typer.Typer(
    name="quantcli",
    help="Convert Hugging Face checkpoints to llama.cpp-exact quantized GGUF (and packed safetensors).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class PlainHelpCommand(TyperCommand):
    """Help as plain text: the help text as written (line breaks kept, no markdown backticks), arguments
    and options with plain metavars (`MODEL`, `TYPE`, `N`), never Typer's `{source}` or `<list[str]>`."""

    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _metavar(param, ctx)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_help_text(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        text = inspect.cleandoc(self.help or "").replace("`", "")
        if text:
            formatter.write_paragraph()
            for line in text.splitlines():
                formatter.write(f"{'':>{formatter.current_indent + 2}}{line}\n" if line else "\n")

    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            help_text = record[1].replace("`", "")
            if param.param_type_name == "argument":
                args.append((_metavar(param, ctx), help_text))
            else:
                names = ", ".join(sorted(param.opts, key=len)) if not param.secondary_opts else record[0]
                if not (param.is_flag or param.count):
                    names += f" {_metavar(param, ctx)}"
                opts.append((names, help_text))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


_TYPE_METAVARS = {"int": "N", "float": "X", "path": "PATH", "file": "FILE", "directory": "DIR"}


def _metavar(param: Any, ctx: _click.Context) -> str:
    """The parameter's own metavar, else its name (an argument) or a plain word for its type (an option:
    Typer's display type `<int range>`, `<list[str]>` reduced to N, TEXT, ...)."""
    if param.metavar:
        return param.metavar
    if param.param_type_name == "argument":
        return (param.name or "ARG").upper()
    kind = param.display_type(ctx).strip("<>").removeprefix("list[").rstrip("]").split(" ")[0]
    return _TYPE_METAVARS.get(kind, "TEXT")


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
for _info in app.registered_commands:  # Typer fills in its own TyperCommand when a command names none
    if _info.cls is TyperCommand:
        _info.cls = PlainHelpCommand


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C: temp files removed, exit code 130.
    raise KeyboardInterrupt


def _command_name(args: list[str]) -> str | None:
    return next((a for a in args if a in COMMANDS), None)


def _emit_json_error(message: str, code: int, kind: str, args: list[str]) -> None:
    if "--json" in args:
        doc = json_doc(_command_name(args) or "quantcli", False, error=message, error_type=kind,
                       exit_code=int(code))
        print(json.dumps(doc))


def _emit_error(message: str, code: int, kind: str, argv: list[str] | None = None) -> None:
    print(f"error: {message}", file=sys.stderr)
    _emit_json_error(message, code, kind, sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    # A shell starts background jobs (`cmd &` in a script) with SIGINT ignored, and Python then keeps it
    # ignored: `kill -INT` would be lost instead of ending the run cleanly (exit 130, no partial output).
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
        _emit_json_error(exc.format_message(), ExitCode.USAGE, "UsageError", sys.argv[1:] if argv is None else argv)
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
