"""What a job writes, decided once for every command and for batch: `--type` / `--bits` / `--format` /
`--group-size` -> a `Target`, and the output's default name.

Three kinds of target (docs/recipes.md):
* "converter": `--type auto|f32|f16|bf16|q8_0` — convert_hf_to_gguf.py's own output, byte for byte;
* "recipe": `--bits N` or `--type Q4_K_M` (any llama-quantize recipe) — the converter at the checkpoint's
  precision followed by llama-quantize, byte for byte, in one pass;
* "packed": `--format ct|mlx|gptq|awq --bits N` — a packed safetensors directory.
`--bits N` for GGUF always means llama-quantize's recipe (plan.ftypes.BITS_RECIPES): 8 is its Q8_0.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from quantcli.errors import UsageError
from quantcli.plan.converter import OUT_TYPES
from quantcli.plan.ftypes import FTYPES, Ftype, ftype_from_bits, parse_ftype
from quantcli.plan.target import SizeTarget
from quantcli.quants.packed import PackedFormat, Scheme, get_format

CONVERTER_TYPES = tuple(OUT_TYPES)
PACKED_FORMATS = ("ct", "mlx", "gptq", "awq")
FORMATS = ("gguf", *PACKED_FORMATS)
DEFAULT_GROUP_SIZE = {"ct": 128, "mlx": 64, "gptq": 128, "awq": 128}
DEFAULT_MAX_SHARD = 5 * 1000**3  # "5GB", as transformers' save_pretrained

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}  # fmt: skip


def parse_size(text: str | int, option: str = "--max-shard-size") -> int:
    """Bytes, or a number with KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if m is None:
            raise UsageError(f"{option} {text!r}: expected bytes or a size such as 5GB or 500MiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if value <= 0:
        raise UsageError(f"{option} {text!r} must be positive")
    return value


@dataclass(frozen=True)
class Target:
    kind: str  # "converter" | "recipe" | "packed"
    format: str = "gguf"
    out_type: str = "auto"  # converter type
    recipe: Ftype | None = None
    bits: int | None = None
    group_size: int | None = None
    max_shard_size: int = DEFAULT_MAX_SHARD
    size_target: SizeTarget | None = None  # --target-size / --target-bpw: types chosen per tensor

    @property
    def packed_format(self) -> type[PackedFormat]:
        return get_format(self.format)

    @property
    def scheme_label(self) -> str:
        """How the output names this target: "Q4_K_M", "q8_0" (converter: resolved later), "MLX-4bit"."""
        if self.kind == "packed":
            return f"{self.format.upper()}-{self.bits}bit"
        if self.size_target is not None:
            return self.size_target.label
        if self.kind == "recipe":
            assert self.recipe is not None
            return self.recipe.name
        return self.out_type


def resolve_target(
    out_type: str | None = None,
    bits: int | None = None,
    fmt: str | None = None,
    group_size: int | None = None,
    max_shard_size: str | int | None = None,
) -> Target:
    """--type / --bits / --format / --group-size / --max-shard-size -> what to write. Raises (one line, its
    exit code) before anything is opened."""
    fmt = (fmt or "gguf").lower()
    if fmt != "gguf":
        packed = get_format(fmt)  # Unsupported for an unknown format
        if out_type not in (None, "auto"):
            raise UsageError(f"--type applies to GGUF output; --format {fmt} takes --bits")
        if bits is None:
            raise UsageError(f"--format {fmt} needs --bits ({', '.join(map(str, packed.bits_allowed))})")
        group = group_size if group_size is not None else DEFAULT_GROUP_SIZE[fmt]
        packed.check(Scheme(int(bits), group))  # 3-bit ct, group 96, ... -> Unsupported
        shard = parse_size(max_shard_size) if max_shard_size is not None else DEFAULT_MAX_SHARD
        return Target("packed", fmt, bits=int(bits), group_size=group, max_shard_size=shard)
    if group_size is not None:
        raise UsageError("--group-size applies to packed formats (--format ct|mlx|gptq|awq)")
    if max_shard_size is not None:
        raise UsageError("--max-shard-size applies to packed formats (--format ct|mlx|gptq|awq)")
    if bits is not None:
        if out_type not in (None, "auto"):
            raise UsageError("give --type or --bits, not both")
        return Target("recipe", recipe=ftype_from_bits(int(bits)), bits=int(bits))
    key = (out_type or "auto").strip().lower()
    if key in CONVERTER_TYPES:
        return Target("converter", out_type=key)
    return Target("recipe", recipe=parse_ftype(out_type or ""))  # Unsupported for an unknown name


def resolve_size_target(
    target_size: str | int | None, target_bpw: float | None, out_type: str | None, bits: int | None,
    fmt: str | None = "gguf",
) -> Target | None:
    """--target-size / --target-bpw -> a recipe target whose types are chosen per tensor (None when neither
    is given). Contradictions are refused here, before anything is opened."""
    if target_size is None and target_bpw is None:
        return None
    given = "--target-size" if target_size is not None else "--target-bpw"
    if target_size is not None and target_bpw is not None:
        raise UsageError("give --target-size or --target-bpw, not both")
    if out_type is not None or bits is not None:
        raise UsageError(f"{given} chooses every tensor's type: it cannot be combined with --type or --bits")
    if (fmt or "gguf").lower() != "gguf":
        raise UsageError(f"{given} applies to GGUF output, not --format {fmt}")
    size = parse_size(target_size, "--target-size") if target_size is not None else None
    # The planning recipe: --pure at Q8_0 marks which tensors are free; the written file type is the mixture's.
    return Target("recipe", recipe=FTYPES["Q8_0"], size_target=SizeTarget(size, target_bpw))


def model_stem(source: Path | str) -> str:
    """The model's name for output files: the directory's name (or a .safetensors file's directory's)."""
    path = Path(source).resolve()
    return (path.name if path.is_dir() else path.parent.name) or "model"


def default_output_name(stem: str, target: Target, converter_label: str | None = None) -> str:
    """`<model>-<TYPE>.gguf` for GGUF (the converter's TYPE once its file type is known: F16, BF16, ...),
    `<model>-<FORMAT>-<bits>bit` (a directory) for packed formats."""
    if target.kind == "packed":
        return f"{stem}-{target.scheme_label}"
    label = converter_label if target.kind == "converter" else target.scheme_label
    return f"{stem}-{label}.gguf"


def resolve_output(output: Path | str | None, default_name: str) -> Path:
    """`-o` as given; `-o DIR/` (a trailing separator), or an existing directory when the output is a file
    (GGUF), means the default name inside DIR; no `-o`: the default name in the current directory. (A packed
    output is itself a directory: `-o` names it, and an existing one needs --force.)"""
    if output is None:
        return Path.cwd() / default_name
    path = Path(output)
    if str(output).endswith(("/", os.sep)) or (default_name.endswith(".gguf") and path.is_dir()):
        return path / default_name
    return path
