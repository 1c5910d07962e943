"""An HF checkpoint seen as a GGUF: names, hparams and tensor transforms from quantcli/arch, in memory.

Tensors come from `quantcli.convert.plan_tensors` (the converter's own HF→GGUF mapping and transforms,
e.g. llama's q/k row permutation, gemma's norm +1) with every type forced to F32, so the runtime computes
with exactly the values a lossless conversion would store. Metadata keys are produced by running the
architecture's hparam list through a file-less gguf.GGUFWriter, i.e. the same keys convert writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from quantcli.errors import InputInvalid


class HFSource:
    def __init__(self, directory: Path | str) -> None:
        from quantcli.arch import effective_config, get_arch, hparam_values
        from quantcli.convert import plan_tensors
        from quantcli.loaders import open_checkpoint

        self.directory = Path(directory)
        self.checkpoint = open_checkpoint(self.directory)
        spec = get_arch(self.checkpoint.config, where=str(self.directory / "config.json"))
        cfg = effective_config(spec, self.checkpoint.config)
        _check_numbers(cfg, self.directory / "config.json")
        cfg["__ftype__"] = LlamaFileType.ALL_F32
        planned = plan_tensors(
            self.checkpoint, spec, cfg, LlamaFileType.ALL_F32, lambda t: GGMLQuantizationType.F32
        )
        self._tensors = {t.name: t for t in planned}
        writer = GGUFWriter(None, spec.gguf_arch)
        for method, value in hparam_values(spec, cfg):
            getattr(writer, method)(value)
        self.metadata: dict[str, Any] = {key: _plain(v.value) for key, v in writer.kv_data[0].items()}
        self.metadata.update(_vocab_metadata(self.directory, self.checkpoint.config))
        self.description = f"HF checkpoint {self.directory}"

    def names(self) -> Iterable[str]:
        return self._tensors.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self._tensors[name].shape)

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType.F32

    def load(self, name: str) -> np.ndarray:
        data = np.asarray(self._tensors[name].produce(), dtype=np.float32)
        if data.shape != self.shape(name):
            raise InputInvalid(f"{name}: produced shape {data.shape}, planned {self.shape(name)}")
        return data


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


def _vocab_metadata(directory: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer keys convert would write (tokens, types, merges, add_bos ...): the runtime tokenizes an
    HF directory from them exactly as it does the converted GGUF. Empty if quantcli.vocab cannot read it."""
    try:
        from quantcli.vocab import read_vocab
    except ImportError:
        return {}
    try:
        entries = read_vocab(directory, config).entries
    except Exception:  # the runtime tokenizes from tokenizer.json itself; metadata is only a refinement
        return {}
    return {e.key: e.value for e in entries if e.key.startswith("tokenizer.ggml.")}
