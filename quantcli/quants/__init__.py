"""GGML block quantizers: one module per type, registered by gguf.GGMLQuantizationType."""

from quantcli.quants.base import (
    QuantType,
    dequantize,
    get,
    native_enabled,
    quantize,
    supported_types,
    to_qtype,
)

# Importing the type modules registers them. Each helper module adds itself here.
from quantcli.quants import floats  # noqa: F401,E402
from quantcli.quants import q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, iq4_xs, tq1_0, tq2_0, mxfp4  # noqa: F401,E402
from quantcli.quants import q2_k, q3_k, q4_k, q5_k, q6_k  # noqa: F401,E402

__all__ = ["QuantType", "dequantize", "get", "native_enabled", "quantize", "supported_types", "to_qtype"]
