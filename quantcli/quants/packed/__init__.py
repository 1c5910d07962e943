"""Packed group-quantization schemes: compressed-tensors (ct), MLX (mlx) and GPTQ v1 (gptq).

Each format module encodes a Linear weight into its packed tensors and decodes them back exactly as the
format's client does; the loaders read packed checkpoints through them and `quantcli.writers.packed`
writes them.
"""

from quantcli.quants.packed import ct, gptq, mlx  # noqa: F401  (registers the formats)
from quantcli.quants.packed.base import MODEL_DTYPES, PackedFormat, Scheme, detect_format, get_format

__all__ = ["MODEL_DTYPES", "PackedFormat", "Scheme", "detect_format", "get_format"]
