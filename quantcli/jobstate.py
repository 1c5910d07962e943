"""State that makes conversions idempotent and resumable (docs/batch.md).

* `TensorCache`: a content-addressed directory of quantized tensors. The key is a hash of the input tensor's
  bytes, dtype and shape, the target type, the importance matrix and any option that changes the bytes, plus
  the quantcli version. A conversion that was killed (even with SIGKILL) and is run again finds every tensor
  it had finished and re-quantizes only the rest; because the key covers everything the bytes depend on, a
  cache entry can never be wrong for the tensor it is looked up for.
* Sidecar `<output>.quantcli.json`: written after the output has been renamed into place; it records a
  fingerprint of the inputs, the options and the quantcli version, plus the output's size, mtime and sha256.
  A job whose sidecar matches the current inputs/options/version and whose output still has the recorded
  size and mtime is complete and current: `quantcli batch` skips it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from quantcli import __version__

SIDECAR_SUFFIX = ".quantcli.json"
CACHE_SUFFIX = ".quantcli-cache"
SIDECAR_SCHEMA = 1
# Bytes of each end of a file hashed by the "stat" fingerprint (safetensors headers sit at the start).
EDGE_BYTES = 1 << 20
_DIGEST = hashlib.sha256().digest_size


def _atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write to a temp name in the same directory, fsync, rename: readers see all of `data` or nothing."""
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


class TensorCache:
    """Content-addressed store of quantized tensors: `get(key) -> bytes | None`, `put(key, bytes)`.

    Entries live in `<directory>/<key[:2]>/<key>`; each is the sha256 of its payload followed by the payload,
    written atomically (temp file + fsync + rename), so a killed process leaves either a whole entry or none,
    and an entry damaged later (disk trouble) is detected, removed and recomputed instead of being trusted.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.puts = 0

    @classmethod
    def for_output(cls, output: Path | str, resume: bool) -> TensorCache:
        """The cache of one conversion: `<output>.quantcli-cache/` beside the output (same filesystem).

        With `resume` the entries of an earlier, interrupted run are reused; without it they are cleared so
        a plain run starts from nothing (the cache is still filled, so *that* run can be resumed).
        """
        output = Path(output)
        directory = output.with_name(output.name + CACHE_SUFFIX)
        if not resume and directory.exists():
            shutil.rmtree(directory)
        return cls(directory)

    @staticmethod
    def key(
        source: np.ndarray,
        qtype: object,
        imatrix: np.ndarray | None = None,
        **options: object,
    ) -> str:
        """Hash of everything the quantized bytes depend on.

        `source` is the tensor as read from the checkpoint (hash its stored bytes: cheaper than the float32
        copy and just as specific), `qtype` the target type (a GGMLQuantizationType, its name or number),
        `imatrix` the importance weights if any, `options` anything else that changes the output bytes
        (e.g. a permutation applied before quantization, the tensor's target shape).
        """
        h = hashlib.sha256()
        array = np.ascontiguousarray(source)
        qname = getattr(qtype, "name", qtype)
        h.update(_canonical_json({
            "v": __version__, "dtype": str(array.dtype), "shape": list(array.shape), "qtype": str(qname),
            "imatrix": None if imatrix is None else [str(imatrix.dtype), list(imatrix.shape)],
            "options": options,
        }))
        h.update(memoryview(array.reshape(-1).view(np.uint8)))
        if imatrix is not None:
            h.update(memoryview(np.ascontiguousarray(imatrix).reshape(-1).view(np.uint8)))
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.directory / key[:2] / key

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        digest, payload = blob[:_DIGEST], blob[_DIGEST:]
        if len(digest) != _DIGEST or hashlib.sha256(payload).digest() != digest:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.misses += 1
            return None
        self.hits += 1
        return payload

    def put(self, key: str, data: bytes | memoryview | np.ndarray) -> None:
        if isinstance(data, np.ndarray):
            payload = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        else:
            payload = memoryview(data)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path, hashlib.sha256(payload).digest() + bytes(payload))
        self.puts += 1

    def __len__(self) -> int:
        return sum(1 for p in self.directory.glob("??/*") if not p.name.startswith(".tmp-"))

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "puts": self.puts}

    def discard(self) -> None:
        """Remove the cache directory (after the output it served has been written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Input fingerprints and sidecars

# Files of a checkpoint directory that a conversion reads (also the hub download patterns, quantcli/hub.py).
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def model_input_files(source: Path) -> list[Path]:
    """The files a conversion of `source` (a checkpoint directory or a .safetensors file) depends on."""
    source = Path(source)
    if source.is_file():
        directory, names = source.parent, {source.name}
    else:
        directory, names = source, set()
    for pattern in MODEL_FILE_PATTERNS:
        if pattern == "*.safetensors" and source.is_file():
            continue
        names.update(p.name for p in directory.glob(pattern) if p.is_file())
    return [directory / n for n in sorted(names)]


def _hub_blob_digest(path: Path) -> str | None:
    """A file in a huggingface_hub cache is a symlink to blobs/<sha256 or git-sha1 of its content>."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and len(target.name) in (40, 64):
        return target.name
    return None


def file_fingerprint(path: Path, mode: str = "stat") -> dict[str, Any]:
    """Fingerprint of one input file.

    "stat": size + mtime_ns + sha256 of the first and last MiB (the safetensors header, which names every
    tensor with its dtype, shape and offsets, sits in the first MiB). Cost: two small reads per file whatever
    the model size, so checking a 140 GB checkpoint for "already done" takes milliseconds. It misses an edit
    in the middle of a file that keeps size and mtime, which no normal tool produces (`touch` or a re-download
    changes the mtime, and a hub re-download gives a new blob name anyway).
    "content": sha256 of the whole file (~1-2 GB/s: minutes for a 70B model), for the paranoid.
    Files in a hub cache are content-addressed already: their blob name is the content hash, used as is.
    """
    stat = path.stat()
    entry: dict[str, Any] = {"name": path.name, "size": stat.st_size}
    blob = _hub_blob_digest(path)
    if blob is not None:
        entry["blob"] = blob
        return entry
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if mode == "content":
            for chunk in iter(lambda: fh.read(16 << 20), b""):
                h.update(chunk)
            entry["sha256"] = h.hexdigest()
            return entry
        h.update(fh.read(EDGE_BYTES))
        if stat.st_size > 2 * EDGE_BYTES:
            fh.seek(-EDGE_BYTES, os.SEEK_END)
            h.update(fh.read(EDGE_BYTES))
        elif stat.st_size > EDGE_BYTES:
            h.update(fh.read())
    entry["mtime_ns"] = stat.st_mtime_ns
    entry["edges_sha256"] = h.hexdigest()
    return entry


def inputs_fingerprint(files: Iterable[Path], mode: str = "stat") -> str:
    return hashlib.sha256(_canonical_json([file_fingerprint(Path(p), mode) for p in files])).hexdigest()


def output_stat(output: Path) -> tuple[int, int]:
    """(bytes, mtime_ns) of an output file, or of a packed output directory (sum of sizes, newest mtime)."""
    output = Path(output)
    if output.is_dir():
        stats = [p.stat() for p in sorted(output.rglob("*")) if p.is_file()]
        return sum(st.st_size for st in stats), max([output.stat().st_mtime_ns, *(st.st_mtime_ns for st in stats)])
    stat = output.stat()
    return stat.st_size, stat.st_mtime_ns


def sidecar_path(output: Path | str) -> Path:
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def write_sidecar(
    output: Path, *, inputs: str, options: dict[str, Any], result: dict[str, Any] | None
) -> Path:
    """Record an output. Called twice per job: with `result=None` before the conversion starts ("in
    progress": says the output path belongs to quantcli, so a run killed between the output's rename and
    the final record is simply redone), and with the conversion's result after the output was renamed."""
    output = Path(output)
    produced = None
    if result is not None:
        size, mtime_ns = output_stat(output)
        produced = {"name": output.name, "bytes": size, "mtime_ns": mtime_ns, "sha256": result.get("sha256")}
    record = {
        "schema": SIDECAR_SCHEMA,
        "quantcli_version": __version__,
        "inputs": inputs,
        "options": options,
        "output": produced,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if produced else None,
    }
    path = sidecar_path(output)
    _atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def read_sidecar(output: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SIDECAR_SCHEMA else None


def output_matches_sidecar(output: Path, record: dict[str, Any]) -> bool:
    """The output is still the file the sidecar describes (same size and mtime: nobody replaced it)."""
    try:
        size, mtime_ns = output_stat(Path(output))
    except FileNotFoundError:
        return False
    recorded = record.get("output") or {}
    return recorded.get("bytes") == size and recorded.get("mtime_ns") == mtime_ns


def is_current(output: Path, *, inputs: str, options: dict[str, Any]) -> bool:
    """True when `output` is complete and was made from these inputs with these options by this version."""
    record = read_sidecar(output)
    if record is None or not output_matches_sidecar(output, record):
        return False
    return (
        record.get("quantcli_version") == __version__
        and record.get("inputs") == inputs
        and _canonical_json(record.get("options")) == _canonical_json(options)
    )
