"""Everything that can make a plan fail at run time, checked before any output is created or weight read."""

from __future__ import annotations

from quantcli import quants
from quantcli.errors import Unsupported, UsageError
from quantcli.gguf_constants import GGML_QUANT_SIZES
from quantcli.gguf_constants import GGMLQuantizationType as T
from quantcli.plan.core import Plan
from quantcli.plan.metadata import ImatrixUse

_FLOATS = (T.F32, T.F16, T.BF16)


def check_plan_executable(plan: Plan, imatrix: ImatrixUse | None, allow_requantize: bool, strict: bool) -> list[str]:
    """Refuse a plan that cannot run (--strict fallbacks, a type with no quantizer, a row its block does not
    divide, requantizing without --allow-requantize, an imatrix that does not fit or is required). Returns the
    names of quantized tensors the imatrix has no entry for (llama-quantize quantizes those without one)."""
    if strict:
        plan.refuse_fallbacks()
    for d in plan.decisions:
        if d.ne[0] % GGML_QUANT_SIZES[d.type][0]:
            # Only reachable through --output-tensor-type / --token-embedding-type, which llama.cpp applies
            # without the fallback check (llama-quantize then aborts mid-file).
            raise UsageError(
                f"{d.name}: row length {d.ne[0]} is not a multiple of {d.type.name}'s block size "
                f"{GGML_QUANT_SIZES[d.type][0]} ({d.reason})"
            )
        if d.changes:
            quants.get(d.type)  # Unsupported if no quantizer for the target type
            if d.src_type not in _FLOATS and not allow_requantize:
                raise Unsupported(
                    f"{d.name} is already {d.src_type.name}: requantizing is disabled (use --allow-requantize)"
                )
            if d.src_type not in _FLOATS:
                quants.get(d.src_type)
    missing: list[str] = []
    if imatrix is not None:
        shapes = [(d.name, d.ne) for d in plan.decisions]
        missing = imatrix.imatrix.check_against(shapes, [d.name for d in plan.decisions if d.changes])
    for d in plan.decisions:
        if d.requires_imatrix and (imatrix is None or (d.changes and d.name not in imatrix.imatrix.entries)):
            raise UsageError(
                f"{plan.recipe.name} requires an importance matrix for {d.name} ({d.type.name}): pass --imatrix"
            )
    return missing
