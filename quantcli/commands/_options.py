"""Options shared between commands, each defined once: llama-quantize's recipe options (--imatrix,
--tensor-type, --pure, ...) for `convert`, `quantize` and `plan`, and the runtime's (MODEL, --ctx,
--exact-activations, ...) for `eval`, `imatrix` and `generate`.

Each function returns a fresh `typer.Option` (Typer keeps state on an OptionInfo, so one instance is not
shared between commands). A command whose help line says something of its own passes `help=`; the option
name and default never change. `recipe_options` adds the whole recipe group to a command at once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

_Command = TypeVar("_Command", bound=Callable[..., None])


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


def target_size() -> Any:
    return typer.Option(
        None, "--target-size", metavar="SIZE",
        help="File size to fill, never exceed: bytes, or 100MB / 1.5GiB; types chosen per tensor (no --type).",
    )  # fmt: skip


def target_bpw() -> Any:
    return typer.Option(
        None, "--target-bpw", metavar="X", help="Bits per weight to fill; types chosen per tensor (no --type)."
    )


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


# Default of the parameter that `recipe_options` replaces with the group (a plain parameter cannot follow
# the options with defaults).
RECIPE: Any = object()

# The recipe group: (parameter, make_job keyword, type, option factory), in --help order.
_RECIPE: tuple[tuple[str, str, Any, Callable[..., Any]], ...] = (
    ("imatrix", "imatrix", str | None, imatrix),
    ("include_weights", "include_weights", list[str], include_weights),
    ("exclude_weights", "exclude_weights", list[str], exclude_weights),
    ("output_tensor_type", "output_tensor_type", str | None, output_tensor_type),
    ("token_embedding_type", "token_embedding_type", str | None, token_embedding_type),
    ("tensor_type", "tensor_types", list[str], tensor_type),
    ("tensor_type_file", "tensor_type_file", Path | None, tensor_type_file),
    ("override_kv", "override_kv", list[str], override_kv),
    ("leave_output_tensor", "leave_output_tensor", bool, leave_output_tensor),
    ("pure", "pure", bool, pure),
)


def method() -> Any:
    return typer.Option(
        None, "--method", metavar="METHOD",
        help="rtn (default: round-to-nearest, llama.cpp's quantizers) or gptq (calibrated, docs/calibration.md).",
    )  # fmt: skip


def calib() -> Any:
    return typer.Option(
        [], "--calib", metavar="FILE",
        help="Calibration text: UTF-8 text or JSONL with a \"text\" field (repeatable; default: the bundled text).",
    )  # fmt: skip


def calib_samples() -> Any:
    return typer.Option(None, "--calib-samples", metavar="N", help="Calibration samples (default 64).")


def calib_seq_len() -> Any:
    return typer.Option(None, "--calib-seq-len", metavar="L", help="Tokens per calibration sample (default 512).")


def act_order() -> Any:
    return typer.Option(
        None, "--act-order/--no-act-order", help="GPTQ: columns by decreasing activation energy (default on)."
    )


def damp() -> Any:
    return typer.Option(None, "--damp", metavar="X", help="GPTQ damping, a fraction of mean diag(H) (default 0.1).")


# Default of the parameter that `calibration_options` replaces with the group.
CALIBRATION: Any = object()

_CALIBRATION: tuple[tuple[str, str, Any, Callable[..., Any]], ...] = (
    ("method", "method", str | None, method),
    ("calib", "calib", list[str], calib),
    ("calib_samples", "calib_samples", int | None, calib_samples),
    ("calib_seq_len", "calib_seq_len", int | None, calib_seq_len),
    ("act_order", "act_order", bool | None, act_order),
    ("damp", "damp", float | None, damp),
)


def recipe_options(**helps: str) -> Callable[[_Command], _Command]:
    """Put llama-quantize's recipe options where the command has its `recipe: ... = RECIPE` parameter; the
    command gets them as one dict of `make_job` keywords. `helps` replaces an option's help line (by parameter name)."""
    return _option_group(RECIPE, _RECIPE, helps)


def calibration_options() -> Callable[[_Command], _Command]:
    """Put the calibration options (--method, --calib ...) where the command has its
    `calibration: ... = CALIBRATION` parameter, as one dict of `make_job` keywords."""
    return _option_group(CALIBRATION, _CALIBRATION, {})


def _option_group(
    marker: Any, table: tuple[tuple[str, str, Any, Callable[..., Any]], ...], helps: dict[str, str]
) -> Callable[[_Command], _Command]:
    unknown = set(helps) - {name for name, *_ in table}
    if unknown:
        raise TypeError(f"no option {sorted(unknown)} in this group")

    def decorate(command: _Command) -> _Command:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.default is not marker:
                params.append(param)
                continue
            for name, _, annotation, factory in table:
                option = factory(helps[name]) if name in helps else factory()
                params.append(inspect.Parameter(name, param.kind, default=option, annotation=annotation))

        (slot,) = [p.name for p in signature.parameters.values() if p.default is marker]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            kwargs[slot] = {keyword: kwargs.pop(name) for name, keyword, *_ in table}
            command(**kwargs)

        # Typer reads the options from the signature and the type hints.
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate
