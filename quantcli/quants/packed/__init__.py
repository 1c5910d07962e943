"""Packed group-quantization schemes: compressed-tensors (ct), MLX (mlx), GPTQ v1 (gptq) and AutoAWQ GEMM
(awq), and the layouts we only read: FP8 (fp8.py) and bitsandbytes (bnb.py).

Each format module encodes a Linear weight into its packed tensors and decodes them back exactly as the
format's client does; the loaders read packed checkpoints through them and `quantcli.writers.packed`
writes the writable ones.
"""

from quantcli.quants.packed import awq, bnb, ct, fp8, gptq, mlx  # noqa: F401  (registers the formats)
from quantcli.quants.packed.base import MODEL_DTYPES, PackedFormat, Scheme, detect_format, get_format

__all__ = ["MODEL_DTYPES", "PackedFormat", "Scheme", "detect_format", "get_format"]
