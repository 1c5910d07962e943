"""An HF checkpoint seen as a GGUF: names, hparams and tensor transforms from quantcli/arch, in memory.

Tensors come from `quantcli.sources.hf.checkpoint_tensors` (the converter's own HF→GGUF mapping and
transforms, e.g. llama's q/k row permutation, gemma's norm +1) with every type forced to F32, so the runtime
computes with exactly the values a lossless conversion would store. Metadata: the architecture's hparam keys
and the tokenizer keys, exactly as the converter writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.arch import effective_config, get_arch, hparam_values
from quantcli.errors import InputInvalid
from quantcli.gguf_constants import GGMLQuantizationType, LlamaFileType
from quantcli.loaders import open_checkpoint
from quantcli.sources.hf import SourceTensor, checkpoint_tensors
from quantcli.vocab import read_vocab
from quantcli.writers.gguf import MetadataBuilder


def _as_f32(name: str, shape: tuple[int, ...], ftype: LlamaFileType) -> GGMLQuantizationType:
    return GGMLQuantizationType.F32


class HFSource:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.checkpoint = open_checkpoint(self.directory)
        spec = get_arch(self.checkpoint.config, where=str(self.directory / "config.json"))
        cfg = effective_config(spec, self.checkpoint.config)
        _check_numbers(cfg, self.directory / "config.json")
        cfg["__ftype__"] = LlamaFileType.ALL_F32
        tensors = checkpoint_tensors(self.checkpoint, spec, cfg, LlamaFileType.ALL_F32, _as_f32)
        self._tensors = {t.name: t for t in tensors}
        meta = MetadataBuilder(spec.gguf_arch)
        # early_hparams too: Phi-3's rope.scaling.attn_factor is one, and it scales every rope angle's cos/sin
        for method, value in [*hparam_values(spec, cfg, early=True), *hparam_values(spec, cfg)]:
            meta.call(method, value)
        self.metadata: dict[str, Any] = {key: _plain(value) for key, value in meta.values().items()}
        self.description = f"HF checkpoint {self.directory}"

    def vocab_metadata(self) -> dict[str, Any]:
        """The tokenizer keys convert writes (tokens, types, merges, add_bos ...), read only when a tokenizer is
        needed: the forward pass does not need one. Raises as convert does for a tokenizer it cannot read."""
        return {e.key: e.value for e in read_vocab(self.directory, self.checkpoint.config).entries}

    def names(self) -> Iterable[str]:
        return self._tensors.keys()

    def source_tensor(self, name: str) -> SourceTensor:
        """The converter's view of GGUF tensor `name`: its HF source name, reader and transform."""
        return self._tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self._tensors[name].shape)

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType.F32

    def load(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        data = np.asarray(tensor.produce(), dtype=np.float32)
        if tensor.release is not None:
            # The checkpoint's mapped pages would otherwise count in our RSS until the end: a calibration
            # run reads every block once, so its memory would grow with the model, not with one block.
            tensor.release()
        if data.shape != self.shape(name):
            raise InputInvalid(f"{name}: produced shape {data.shape}, planned {self.shape(name)}")
        return data

    def load_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.load(name)[np.asarray(rows)]


# config.json keys the runtime turns into numbers (the converter would write them as GGUF ints/floats).
_NUMERIC_CONFIG_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "sliding_window",
    "query_pre_attn_scalar",
    "rope_local_base_freq",
    "final_logit_softcapping",
    "attn_logit_softcapping",
)


def _check_numbers(cfg: dict[str, Any], where: Path) -> None:
    for key in _NUMERIC_CONFIG_KEYS:
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputInvalid(f"{where}: {key} is {value!r}, expected a number")


def _plain(value: Any) -> Any:
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value  # enums (rope scaling type, file type)
    return value
