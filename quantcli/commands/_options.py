"""Options shared between commands, each defined once: llama-quantize's recipe options (--imatrix,
--tensor-type, --pure, ...) for `convert`, `quantize` and `plan`, and the runtime's (MODEL, --ctx,
--exact-activations, ...) for `eval`, `imatrix` and `generate`.

Each function returns a fresh `typer.Option` (Typer keeps state on an OptionInfo, so one instance is not
shared between commands). A command whose help line says something of its own passes `help=`; the option
name and default never change.
"""

from __future__ import annotations

from typing import Any

import typer


def imatrix(help: str = "Importance matrix (llama-imatrix .gguf or .dat).") -> Any:  # noqa: A002
    return typer.Option(None, "--imatrix", metavar="FILE", help=help)


def include_weights(help: str = "Use imatrix entries whose name contains this (repeatable).") -> Any:  # noqa: A002
    return typer.Option([], "--include-weights", metavar="NAME", help=help)


def exclude_weights(help: str = "Ignore imatrix entries whose name contains this (repeatable).") -> Any:  # noqa: A002
    return typer.Option([], "--exclude-weights", metavar="NAME", help=help)


def output_tensor_type() -> Any:
    return typer.Option(None, "--output-tensor-type", metavar="TYPE", help="Type for output.weight.")


def token_embedding_type() -> Any:
    return typer.Option(None, "--token-embedding-type", metavar="TYPE", help="Type for token_embd.weight.")


def tensor_type(help: str = "REGEX=TYPE for matching tensors (repeatable, first match wins).") -> Any:  # noqa: A002
    return typer.Option([], "--tensor-type", metavar="REGEX=TYPE", help=help)


def tensor_type_file() -> Any:
    return typer.Option(None, "--tensor-type-file", metavar="FILE", help="File of REGEX=TYPE entries.")


def override_kv(
    help: str = "KEY=TYPE:VALUE metadata override (int, float, bool, str), as llama-quantize.",  # noqa: A002
) -> Any:
    return typer.Option([], "--override-kv", metavar="KEY=TYPE:VALUE", help=help)


def leave_output_tensor(help: str = "Keep output.weight unquantized.") -> Any:  # noqa: A002
    return typer.Option(False, "--leave-output-tensor", help=help)


def pure(help: str = "No k-quant mixture: every tensor gets the recipe's type.") -> Any:  # noqa: A002
    return typer.Option(False, "--pure", help=help)


def strict(help: str) -> Any:  # noqa: A002
    return typer.Option(False, "--strict", help=help)


def json_out(help: str = "Print the result as one JSON object on stdout (docs/json.md).") -> Any:  # noqa: A002
    return typer.Option(False, "--json", help=help)


def threads() -> Any:
    return typer.Option(None, "--threads", min=1, metavar="N", help="Quantization threads (C extension).")


def runtime_model() -> Any:
    return typer.Argument(..., metavar="MODEL", help="GGUF file or HF checkpoint directory.")


def text(help: str) -> Any:  # noqa: A002
    return typer.Option(None, "--text", metavar="FILE", help=help)


def ctx(default: int, help: str) -> Any:  # noqa: A002
    return typer.Option(default, "--ctx", metavar="N", help=help)


def chunks(help: str) -> Any:  # noqa: A002
    return typer.Option(None, "--chunks", metavar="N", help=help)


def exact_activations() -> Any:
    return typer.Option(
        False, "--exact-activations", help="Plain float32 math: no ggml-style activation rounding / F16 KV."
    )
