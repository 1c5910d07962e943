"""Architecture tables (one module per family). `get_arch(config)` finds the spec or raises Unsupported."""

from quantcli.arch import gemma2, gemma3, granite, llama, moe, olmo2, phi3, qwen  # noqa: F401  (importing registers them)
from quantcli.arch.base import (
    ArchSpec,
    ExpertStack,
    HParam,
    Mxfp4Experts,
    RuntimeTraits,
    SplitTensor,
    TensorPart,
    TensorTransform,
    TransformContext,
    check_layer_count,
    check_tensors,
    effective_config,
    expert_count,
    get_arch,
    hparam_values,
    supported_architectures,
)

__all__ = [
    "ArchSpec",
    "ExpertStack",
    "HParam",
    "Mxfp4Experts",
    "RuntimeTraits",
    "SplitTensor",
    "TensorPart",
    "TensorTransform",
    "TransformContext",
    "check_layer_count",
    "check_tensors",
    "effective_config",
    "expert_count",
    "get_arch",
    "hparam_values",
    "supported_architectures",
]
