"""GGML block quantizers: one module per type, registered by gguf.GGMLQuantizationType."""

# Importing a type module registers it (QuantType.__init_subclass__).
from quantcli.quants import (  # noqa: F401
    floats,
    iq4_nl,
    iq4_xs,
    mxfp4,
    q2_k,
    q3_k,
    q4_0,
    q4_1,
    q4_k,
    q5_0,
    q5_1,
    q5_k,
    q6_k,
    q8_0,
    tq1_0,
    tq2_0,
)
from quantcli.quants.base import (
    QuantType,
    dequantize,
    get,
    native_enabled,
    quantize,
    supported_types,
    to_qtype,
)

__all__ = ["QuantType", "dequantize", "get", "native_enabled", "quantize", "supported_types", "to_qtype"]
