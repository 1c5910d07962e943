"""Hugging Face checkpoints on disk: `config.json` + one or more safetensors files.

Accepted sources (formats/safetensors.md):
* a directory with `config.json` and `model.safetensors`, or shards listed by
  `model.safetensors.index.json` (or, without an index, every `model*.safetensors` in the directory);
* a single `.safetensors` file whose directory holds `config.json`.

Every header (and the index) is validated when the checkpoint is opened; tensor data is read lazily,
one tensor at a time, from read-only memory maps (`read`) or with file reads into memory of its own
(`load`, what a conversion streams). Nothing under the source is ever written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.loaders.closing import Closing
from quantcli.loaders.safetensors import SafetensorsFile, TensorInfo

INDEX_NAME = "model.safetensors.index.json"


# config.json and the shard index are kilobytes; json.load reads the whole file, so bound it first.
MAX_JSON_BYTES = 256 << 20


def _load_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise InputInvalid(f"{path}: {path.stat().st_size:,} bytes, more than {MAX_JSON_BYTES >> 20} MiB of JSON")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputMissing(f"{path}: {what} not found") from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, an integer of more than 4300 digits
        raise InputInvalid(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputInvalid(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise InputMissing(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


class Checkpoint(Closing):
    """A validated HF checkpoint: `config`, `directory`, tensor names/infos, `read(name)`."""

    def __init__(self, directory: Path, config: dict[str, Any], files: list[SafetensorsFile]) -> None:
        self.directory = directory
        self.config = config
        self.files = files
        self._where: dict[str, SafetensorsFile] = {}
        for st in files:
            for name in st.tensors:
                if name in self._where:
                    raise InputInvalid(
                        f"{st.path}: tensor {name!r} is also in {self._where[name].path.name} (names must be unique)"
                    )
                self._where[name] = st

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        return None

    def tensor_names(self) -> list[str]:
        """Files in name order, tensors sorted by name within a file: the converter's iteration order."""
        return [name for st in self.files for name in st.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self._where[name].tensors[name]
        except KeyError:
            raise InputInvalid(f"{self.directory}: checkpoint has no tensor {name!r}") from None

    def read(self, name: str) -> np.ndarray:
        """Memory-mapped, read-only array of tensor `name` in its stored dtype (BF16: ml_dtypes.bfloat16)."""
        self.tensor_info(name)
        return self._where[name].read(name)

    def release(self, name: str) -> None:
        """Let the OS drop tensor `name`'s mapped pages from our RSS once it has been used."""
        self._where[name].release(name)

    def load(self, name: str, bf16_as_float32: bool = False) -> np.ndarray:
        """Tensor `name` read into memory of its own (see SafetensorsFile.load), BF16 widened to float32 with
        `bf16_as_float32`."""
        self.tensor_info(name)
        return self._where[name].load(name, bf16_as_float32)

    def read_range(self, name: str, start: int, out: memoryview) -> None:
        """Bytes `start`.. of tensor `name`'s stored data into `out` (see SafetensorsFile.read_range)."""
        self.tensor_info(name)
        self._where[name].read_range(name, start, out)

    def prefetch(self, name: str) -> None:
        """Start reading tensor `name` into the page cache (see SafetensorsFile.prefetch)."""
        self.tensor_info(name)
        self._where[name].prefetch(name)

    def total_bytes(self) -> int:
        return sum(info.nbytes for st in self.files for info in st.tensors.values())

    def close(self) -> None:
        for st in self.files:
            st.close()


def _shard_files_from_index(directory: Path) -> list[SafetensorsFile]:
    index_path = directory / INDEX_NAME
    index = _load_json(index_path, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputInvalid(f"{index_path}: weight_map is missing or empty")
    for name, fname in weight_map.items():
        if not isinstance(fname, str) or Path(fname).name != fname or not fname.endswith(".safetensors"):
            raise InputInvalid(
                f"{index_path}: weight_map[{name!r}] = {fname!r} is not a .safetensors file name"
            )
    shard_names = sorted(set(weight_map.values()))
    missing = [f for f in shard_names if not (directory / f).is_file()]
    if missing:
        raise InputMissing(f"{index_path}: shard file(s) not found: {', '.join(missing)}")
    files = [SafetensorsFile(directory / f) for f in shard_names]
    for st in files:
        for name in st.tensors:
            listed = weight_map.get(name)
            if listed != st.path.name:
                raise InputInvalid(
                    f"{index_path}: tensor {name!r} is in {st.path.name} but the index "
                    + (f"places it in {listed}" if listed else "does not list it")
                )
    present = {name for st in files for name in st.tensors}
    absent = [n for n in weight_map if n not in present]
    if absent:
        raise InputInvalid(
            f"{index_path}: {len(absent)} tensor(s) listed but absent from their shard, e.g. {absent[0]!r} "
            f"(expected in {weight_map[absent[0]]})"
        )
    return files


def open_hf_checkpoint(source: Path | str) -> Checkpoint:
    """Open and validate an HF checkpoint directory or a single .safetensors file (see module doc).

    Tensors are served as stored; `quantcli.loaders.open_checkpoint` is the entry point that also reads
    packed checkpoints back dequantized.
    """
    source = Path(source)
    if not source.exists():
        raise InputMissing(f"{source}: no such file or directory")
    if source.is_file():
        if source.suffix != ".safetensors":
            raise Unsupported(f"{source}: expected a model directory or a .safetensors file")
        directory = source.parent
        files = [SafetensorsFile(source)]
    else:
        directory = source
        files = []
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputMissing(f"{config_path}: config.json not found (needed to know the architecture)")
    config = _load_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise InputInvalid(f"{config_path}: is not a JSON object")
    if not files:
        if (directory / INDEX_NAME).is_file():
            files = _shard_files_from_index(directory)
        else:
            names = sorted(
                p.name
                for p in directory.iterdir()
                if p.name.startswith("model") and p.name.endswith(".safetensors")
            )
            if not names:
                if any(directory.glob("pytorch_model*.bin")) or any(directory.glob("*.pth")):
                    raise Unsupported(
                        f"{directory}: only safetensors checkpoints are supported (found PyTorch .bin/.pth files)"
                    )
                raise InputMissing(f"{directory}: no model.safetensors (or shards with {INDEX_NAME}) found")
            files = [SafetensorsFile(directory / n) for n in names]
    return Checkpoint(directory, config, files)
