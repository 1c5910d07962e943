"""llama-quantize's recipe options (--imatrix, --tensor-type, --pure, ...), defined once for `convert`,
`quantize` and `plan`.

Each function returns a fresh `typer.Option` (Typer keeps state on an OptionInfo, so one instance is not
shared between commands). A command whose help line says something of its own passes `help=`; the option
name and default never change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from quantcli.plan.core import Overrides
    from quantcli.requantize import ImatrixUse


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


def load_recipe_options(
    *,
    imatrix: str | None,
    include_weights: list[str],
    exclude_weights: list[str],
    pure: bool,
    output_tensor_type: str | None,
    token_embedding_type: str | None,
    tensor_type: list[str],
    tensor_type_file: Path | None,
    leave_output_tensor: bool,
    override_kv: list[str],
    set_has_imatrix: bool = False,
) -> tuple[ImatrixUse | None, Overrides]:
    """The imatrix (filtered by --include/--exclude-weights) and the Overrides the options ask for.

    `set_has_imatrix`: mark the Overrides as having a (non-empty) imatrix here; the quantize paths set it
    themselves from the imatrix they are handed, so `quantize` leaves it False.
    """
    from quantcli.plan.options import build_overrides
    from quantcli.requantize import load_imatrix_use

    im = load_imatrix_use(imatrix, include_weights, exclude_weights)
    overrides = build_overrides(
        pure=pure,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        tensor_types=tensor_type,
        tensor_type_file=tensor_type_file,
        leave_output_tensor=leave_output_tensor,
        override_kv=override_kv,
        has_imatrix=set_has_imatrix and im is not None and bool(im.imatrix.entries),
    )
    return im, overrides
