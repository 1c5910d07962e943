"""llama-imatrix files -> per-tensor importance weights, exactly as llama-quantize computes them.

Two formats (formats/imatrix.md): the GGUF imatrix (`<name>.in_sum2` raw sums of squared activations,
`<name>.counts` token counts per matrix) and the legacy `.dat` (values pre-divided by the count and
multiplied by `ncall`). llama-quantize (tools/quantize/quantize.cpp `load_imatrix`) turns both into
"mean squared activation per input column", float32:

* GGUF: `w[j*ne0 + i] = in_sum2[j*ne0 + i] / float(lround(counts[j]))`, or 1.0 for every column of a
  matrix whose count is <= 0;
* legacy: `w = value / float(ncall)` when ncall > 0, else the raw values.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantcli.errors import ImatrixMismatch, InputInvalid, InputMissing, UsageError, printable
from quantcli.gguf_constants import GGMLQuantizationType, GGUFValueType

IN_SUM2 = ".in_sum2"
# Tensor names are < 64 bytes in ggml (GGML_MAX_NAME); a longer one is a corrupt length field, not a name
# to copy (the GGUF reader uses the same bound).
MAX_NAME_BYTES = 1 << 16
COUNTS = ".counts"


@dataclass
class Imatrix:
    path: Path
    entries: dict[str, np.ndarray]  # tensor name -> float32 weights (n_mat * ne0), sorted by name
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    is_legacy: bool = False

    def filtered(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Imatrix:
        """--include-weights / --exclude-weights (substring tests; exclude first, as prepare_imatrix)."""
        if include and exclude:
            raise UsageError("--include-weights and --exclude-weights cannot be combined")
        entries = dict(self.entries)
        for needle in exclude:
            entries = {k: v for k, v in entries.items() if needle not in k}
        if include:
            entries = {k: v for k, v in entries.items() if any(n in k for n in include)}
        return Imatrix(
            self.path, entries, list(self.datasets), self.chunk_count, self.chunk_size, self.is_legacy
        )

    def weights_for(self, name: str, ne: tuple[int, ...]) -> np.ndarray | None:
        """The weights llama-quantize passes for tensor `name` of shape `ne`, or None (no entry).

        An entry of the wrong length is an error (ImatrixMismatch) except for token_embd, which
        llama-quantize silently quantizes without weights.
        """
        values = self.entries.get(name)
        if values is None:
            return None
        expected = ne[0] * (ne[2] if len(ne) > 2 else 1)
        if values.size == expected:
            return values
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return None
        raise ImatrixMismatch(
            f"imatrix entry {printable(name)} has {values.size} values but the tensor needs {expected} "
            f"(imatrix {self.path.name} was made for a different model?)"
        )

    def check_against(
        self, tensors: Iterable[tuple[str, tuple[int, ...]]], quantized: Iterable[str]
    ) -> list[str]:
        """Refuse an imatrix made for another model; return the quantized tensors it has no entry for.

        Different model = an entry names a tensor this model does not have, or has the wrong length
        for a tensor that will be quantized, or no entry matches at all.
        """
        shapes = dict(tensors)
        quantized = list(quantized)
        for name, values in self.entries.items():  # llama-quantize checks the (filtered) entries it uses
            _finite(values, name, self.path)
        unknown = [name for name in self.entries if name not in shapes]
        if unknown:
            raise ImatrixMismatch(
                f"imatrix {self.path.name} has {len(unknown)} entries for tensors this model does not have "
                f"(e.g. {unknown[0]}): it was made for a different model"
            )
        for name in quantized:
            self.weights_for(name, shapes[name])
        if self.entries and not any(name in self.entries for name in quantized):
            raise ImatrixMismatch(f"imatrix {self.path.name} has no entry for any tensor being quantized")
        return [name for name in quantized if name not in self.entries and name.startswith("blk.")]


def load_imatrix(path: str | Path) -> Imatrix:
    """common_imatrix_load + load_imatrix: GGUF first, legacy .dat otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"imatrix {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path)


def _lround(x: np.ndarray) -> np.ndarray:
    # C lround: half away from zero.
    return np.sign(x) * np.floor(np.abs(x.astype(np.float64)) + 0.5)


_INTEGER_TYPES = (
    GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16, GGUFValueType.UINT32,
    GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64,
)


def _u32(kv: object, path: Path) -> int:
    """imatrix.chunk_count / chunk_size: llama-imatrix writes u32 (and the count is copied into the output
    as u32), so a string, a float or a value outside 0..2^32-1 is a malformed file, not a crash."""
    value = getattr(kv, "value", None)
    if getattr(kv, "type", None) not in _INTEGER_TYPES or not 0 <= int(value) < 1 << 32:
        raise InputInvalid(f"{path}: {kv.key} is {value!r}, expected an unsigned 32-bit integer")  # type: ignore[attr-defined]
    return int(value)


def _load_gguf(path: Path) -> Imatrix:
    from quantcli.loaders.gguf import GGUFFile

    with GGUFFile(path) as f:
        datasets_kv = f.kv.get("imatrix.datasets")
        chunk_count = f.kv.get("imatrix.chunk_count")
        chunk_size = f.kv.get("imatrix.chunk_size")
        if datasets_kv is None or chunk_count is None or chunk_size is None:
            raise InputInvalid(f"missing imatrix metadata in file {path} (is it an imatrix?)")
        datasets: list[str] = []
        if datasets_kv.type == GGUFValueType.ARRAY and datasets_kv.array_type == GGUFValueType.STRING:
            datasets = list(datasets_kv.value)
        if not f.tensors:
            raise InputInvalid(f"no data in imatrix file {path}")
        pairs: dict[str, dict[str, str]] = {}
        for tname in f.tensors:
            for suffix, slot in ((IN_SUM2, "sums"), (COUNTS, "counts")):
                if tname.endswith(suffix) and len(tname) > len(suffix):
                    pairs.setdefault(tname[: -len(suffix)], {})[slot] = tname
        entries: dict[str, np.ndarray] = {}
        for name in sorted(pairs, key=lambda s: s.encode()):
            slots = pairs[name]
            if "sums" not in slots or "counts" not in slots:
                raise InputInvalid(f"{path}: mismatched sums and counts for {printable(name)}")
            sums_info, counts_info = f.tensors[slots["sums"]], f.tensors[slots["counts"]]
            if sums_info.type != GGMLQuantizationType.F32 or counts_info.type != GGMLQuantizationType.F32:
                raise InputInvalid(f"{path}: sums and counts for {printable(name)} must be F32")
            sums = np.array(f.tensor_bytes(slots["sums"]).view("<f4"), dtype=np.float32)
            counts = _lround(np.array(f.tensor_bytes(slots["counts"]).view("<f4"))).astype(np.float32)
            if counts.size == 0 or sums.size % counts.size:
                raise InputInvalid(f"{path}: {printable(name)} has {sums.size} sums for {counts.size} counts")
            ne0 = sums.size // counts.size
            per_matrix = sums.reshape(counts.size, ne0)
            weights = np.ones_like(per_matrix)
            positive = counts > 0
            weights[positive] = per_matrix[positive] / counts[positive, None]
            entries[name] = weights.reshape(-1)
        return Imatrix(path, entries, datasets, _u32(chunk_count, path), _u32(chunk_size, path), False)


def _load_legacy(path: Path) -> Imatrix:
    # Memory-mapped, not read whole: only the bytes the entries describe are touched, so a huge (or
    # sparse) file given as --imatrix costs nothing before its counts are checked against its size.
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return _parse_legacy(path, b"")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse_legacy(path, data)


def _parse_legacy(path: Path, data: bytes | mmap.mmap) -> Imatrix:
    pos = 0

    def take(fmt: str, what: str) -> int:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputInvalid(f"{path}: truncated imatrix ({what})")
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += size
        return value

    n_entries = take("<i", "entry count")
    if n_entries < 1:
        raise InputInvalid(f"{path}: not an imatrix (no data)")
    entries: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        n = take("<i", f"name length of entry {i + 1}")
        if n < 0 or n > MAX_NAME_BYTES or pos + n > len(data):
            raise InputInvalid(f"{path}: not an imatrix (bad name length in entry {i + 1})")
        name = data[pos : pos + n].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        pos += n
        ncall = take("<i", f"ncall of {printable(name)}")
        nval = take("<i", f"value count of {printable(name)}")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputInvalid(f"{path}: bad value count for entry {printable(name)}")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        if ncall > 0:
            values = values / np.float32(ncall)
        entries[name] = values
    chunk_count = 0
    datasets: list[str] = []
    if pos + 4 <= len(data):
        chunk_count = take("<i", "chunk count")
        if pos + 4 <= len(data):
            n = take("<i", "dataset length")
            if 0 < n <= MAX_NAME_BYTES and pos + n <= len(data):  # a path; a larger count is corrupt
                datasets.append(data[pos : pos + n].split(b"\0", 1)[0].decode("utf-8", errors="replace"))
    entries = dict(sorted(entries.items(), key=lambda kv: kv[0].encode()))
    return Imatrix(path, entries, datasets, chunk_count, 0, True)


def _finite(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    if not np.isfinite(values).all():
        raise InputInvalid(f"imatrix {path.name} contains non-finite values for {printable(name)}")
    return values.astype(np.float32, copy=False)
