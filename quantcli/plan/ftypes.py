"""llama.cpp file types ("recipes"): CLI name -> LLAMA_FTYPE value and default tensor type.

Mirrors QUANT_OPTIONS in tools/quantize/quantize.cpp and llama_ftype_get_default_type in
src/llama-quant.cpp (llama-cpp-python 0.3.36 tree).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantcli.errors import Unsupported, UsageError
from quantcli.gguf_constants import GGMLQuantizationType as T


@dataclass(frozen=True)
class Ftype:
    name: str  # canonical CLI name, e.g. "Q4_K_M"
    value: int  # LLAMA_FTYPE_*, written to general.file_type
    default_type: T

    @property
    def is_quantized(self) -> bool:
        return self.default_type not in (T.F32, T.F16, T.BF16)


# (name, LLAMA_FTYPE value, default ggml type). Q2_0 (41) is omitted: gguf-py 0.19 has no GGML type for it.
_TABLE: list[tuple[str, int, T]] = [
    ("F32", 0, T.F32),
    ("F16", 1, T.F16),
    ("Q4_0", 2, T.Q4_0),
    ("Q4_1", 3, T.Q4_1),
    ("Q8_0", 7, T.Q8_0),
    ("Q5_0", 8, T.Q5_0),
    ("Q5_1", 9, T.Q5_1),
    ("Q2_K", 10, T.Q2_K),
    ("Q3_K_S", 11, T.Q3_K),
    ("Q3_K_M", 12, T.Q3_K),
    ("Q3_K_L", 13, T.Q3_K),
    ("Q4_K_S", 14, T.Q4_K),
    ("Q4_K_M", 15, T.Q4_K),
    ("Q5_K_S", 16, T.Q5_K),
    ("Q5_K_M", 17, T.Q5_K),
    ("Q6_K", 18, T.Q6_K),
    ("IQ2_XXS", 19, T.IQ2_XXS),
    ("IQ2_XS", 20, T.IQ2_XS),
    ("Q2_K_S", 21, T.Q2_K),
    ("IQ3_XS", 22, T.IQ3_S),
    ("IQ3_XXS", 23, T.IQ3_XXS),
    ("IQ1_S", 24, T.IQ1_S),
    ("IQ4_NL", 25, T.IQ4_NL),
    ("IQ3_S", 26, T.IQ3_S),
    ("IQ3_M", 27, T.IQ3_S),
    ("IQ2_S", 28, T.IQ2_XS),
    ("IQ2_M", 29, T.IQ2_S),
    ("IQ4_XS", 30, T.IQ4_XS),
    ("IQ1_M", 31, T.IQ1_M),
    ("BF16", 32, T.BF16),
    ("TQ1_0", 36, T.TQ1_0),
    ("TQ2_0", 37, T.TQ2_0),
    ("MXFP4_MOE", 38, T.MXFP4),
    ("Q1_0", 40, T.Q1_0),
]
FTYPES: dict[str, Ftype] = {name: Ftype(name, value, default) for name, value, default in _TABLE}
ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# The recipes `quantcli quantize` / `convert` promise to reproduce byte for byte (docs/recipes.md).
SUPPORTED_FTYPES: tuple[str, ...] = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
    "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE", "F16", "BF16",
    "F32",
)  # fmt: skip

# `--bits N` shorthand (docs/recipes.md).
BITS_RECIPES: dict[int, str] = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K_M", 4: "Q4_K_M", 3: "Q3_K_M", 2: "Q2_K"}


def parse_ftype(text: str | int) -> Ftype:
    """A recipe name (case-insensitive, aliases Q3_K/Q4_K/Q5_K) or LLAMA_FTYPE number -> Ftype."""
    key = str(text).strip().upper()
    key = ALIASES.get(key, key)
    if key in FTYPES:
        return FTYPES[key]
    if key.isdigit():
        for ft in FTYPES.values():
            if ft.value == int(key):
                return ft
    raise Unsupported(f"unknown quantization type {text!r} (known: {', '.join(SUPPORTED_FTYPES)})")


def ftype_from_bits(bits: int) -> Ftype:
    try:
        return FTYPES[BITS_RECIPES[int(bits)]]
    except KeyError:
        choices = ", ".join(str(b) for b in sorted(BITS_RECIPES))
        raise UsageError(f"--bits {bits} has no recipe (choose one of {choices})") from None


def resolve_recipe(type_name: str | None, bits: int | None) -> Ftype:
    if (type_name is None) == (bits is None):
        raise UsageError("give exactly one of --type or --bits")
    return parse_ftype(type_name) if type_name is not None else ftype_from_bits(int(bits))  # type: ignore[arg-type]


def parse_ggml_type(text: str) -> T:
    """A tensor type name as llama-quantize's parse_ggml_type accepts it (case-insensitive)."""
    key = text.strip().upper()
    try:
        return T[key]
    except KeyError:
        raise Unsupported(f"unknown tensor type {text!r}") from None
