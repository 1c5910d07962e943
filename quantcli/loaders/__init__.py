"""Model readers. `open_checkpoint` validates an HF checkpoint and reads its tensors lazily."""

from quantcli.loaders.closing import Closing
from quantcli.loaders.hf import Checkpoint
from quantcli.loaders.packed import open_checkpoint
from quantcli.loaders.safetensors import FLOAT_DTYPES, SafetensorsFile, TensorInfo

__all__ = ["FLOAT_DTYPES", "Checkpoint", "Closing", "SafetensorsFile", "TensorInfo", "open_checkpoint"]
