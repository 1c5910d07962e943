"""Packed safetensors writers: compressed-tensors (ct), MLX (mlx) and GPTQ v1 (gptq)."""

from quantcli.writers.packed import ct, gptq, mlx  # noqa: F401  (registers the formats)
from quantcli.writers.packed.base import PackedFormat, Scheme, detect_format, get_format

__all__ = ["PackedFormat", "Scheme", "detect_format", "get_format"]
