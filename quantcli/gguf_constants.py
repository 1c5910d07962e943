"""gguf-py's constants module (GGMLQuantizationType, GGML_QUANT_SIZES, GGUFValueType, LlamaFileType, ...)
without the rest of the gguf package.

`import gguf` runs its __init__, which also loads its reader, writer, vocab (sentencepiece) and metadata
(yaml) modules: about 40 ms that a GGUF -> GGUF quantize, whose whole run is a few hundred, never uses.
This module loads gguf/constants.py on its own and registers it as `gguf.constants`: a later `import gguf`
finds it there and reuses it, so there is one class per enum whichever is imported first (the package then has no `constants` attribute:
import the submodule by name). Every quantcli
module takes these names from here; the gguf package itself is imported where its writer, reader, metadata
or quantizers are used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING


def _constants() -> ModuleType:
    loaded = sys.modules.get("gguf.constants")
    if loaded is not None:  # gguf was imported first
        return loaded
    package = importlib.util.find_spec("gguf")  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'gguf'", name="gguf")
    spec = importlib.util.spec_from_file_location(
        "gguf.constants", Path(package.submodule_search_locations[0]) / "constants.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gguf.constants"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["gguf.constants"]
        raise
    return module


if TYPE_CHECKING:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType
else:
    _module = _constants()
    GGML_QUANT_SIZES = _module.GGML_QUANT_SIZES
    GGMLQuantizationType = _module.GGMLQuantizationType
    GGUFValueType = _module.GGUFValueType
    LlamaFileType = _module.LlamaFileType

__all__ = ["GGML_QUANT_SIZES", "GGMLQuantizationType", "GGUFValueType", "LlamaFileType"]
