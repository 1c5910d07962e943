"""Write an HF checkpoint as packed safetensors: quantized Linear layers, everything else as it was.

The formats themselves (tensor layout, encoding, config entries) live in `quantcli.quants.packed`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantcli.atomic import atomic_dir
from quantcli.console import peak_rss_bytes
from quantcli.errors import InputInvalid
from quantcli.loaders import Checkpoint
from quantcli.quants.packed import MODEL_DTYPES, PackedFormat, Scheme
from quantcli.writers.safetensors import PlannedTensor, SafetensorsStreamWriter

# Small files copied next to the weights (tokenizer, generation settings, chat template).
COPY_SUFFIXES = (".json", ".model", ".txt", ".jinja", ".tiktoken")
SKIP_FILES = {"config.json", "model.safetensors.index.json"}


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """The tensors packed formats quantize: 2-D `.weight`s of a decoder block's Linear layers.

    Embeddings, lm_head and norms stay in the source dtype, as llm-compressor, mlx-lm's default predicate
    for non-block layers and GPTQ tools leave them.
    """
    return len(shape) == 2 and name.startswith("model.layers.") and name.endswith(".weight")


def packed_names(fmt: type[PackedFormat], module: str, shape: tuple[int, ...], scheme: Scheme) -> list[PlannedTensor]:
    """Names, dtypes and shapes of the tensors replacing `<module>.weight`, known before any compute."""
    return [
        PlannedTensor(f"{module}.{suffix}", dtype, shp)
        for suffix, (dtype, shp) in fmt.layout(shape[0], shape[1], scheme).items()
    ]


def _kept_dtype(dtype: np.dtype, scheme: Scheme) -> np.dtype:
    """Unquantized float tensors are stored in the scheme's model dtype (GPTQ models run in float16)."""
    return np.dtype(scheme.np_dtype) if np.dtype(dtype).kind == "f" or dtype == MODEL_DTYPES["bfloat16"] else np.dtype(dtype)


def _require_finite(weights: np.ndarray, name: str) -> None:
    """A NaN/Inf weight would become a NaN group scale: refuse it like the GGUF quantizers (exit 4)."""
    finite = np.isfinite(weights)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        raise InputInvalid(f"{name}: non-finite value at row {row}, column {col}")


def write_packed(
    ckpt: Checkpoint,
    output: Path,
    fmt: type[PackedFormat],
    scheme: Scheme,
    *,
    force: bool = False,
    max_shard_size: int = 5 * 1024**3,
    on_tensor: Callable[[str], None] | None = None,
    calibrated: Callable[[str], dict[str, np.ndarray] | None] | None = None,
) -> dict[str, object]:
    """`calibrated(name)`: a linear's tensors made by a calibration stage (GPTQ), written instead of
    round-to-nearest's; None for a linear it did not quantize. For a kept tensor it may return
    `{"weight": values}` in the model dtype (AWQ's folded norms), written instead of the checkpoint's."""
    start = time.perf_counter()
    names = ckpt.tensor_names()
    linear = [n for n in names if is_linear_weight(n, ckpt.tensor_info(n).shape)]
    for n in linear:  # refuse unsupported combinations before any compute
        fmt.check(scheme, ckpt.tensor_info(n).shape[1])
    if not linear:
        fmt.check(scheme)

    plan: list[tuple[str, list[PlannedTensor]]] = []
    for n in names:
        info = ckpt.tensor_info(n)
        if n in linear:
            plan.append((n, packed_names(fmt, n.removesuffix(".weight"), info.shape, scheme)))
        else:
            plan.append((n, [PlannedTensor(n, _kept_dtype(ckpt.read(n).dtype, scheme), info.shape)]))

    shards: list[list[tuple[str, list[PlannedTensor]]]] = [[]]
    size = 0
    for entry in plan:
        entry_bytes = sum(t.nbytes for t in entry[1])
        if shards[-1] and size + entry_bytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry_bytes

    counts = {"quantized": 0, "kept": 0}
    with atomic_dir(output, force) as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            with open(tmp / fname, "wb") as fh:
                writer = SafetensorsStreamWriter(fh, [t for _, ts in shard for t in ts], {"format": "pt"})
                for src, targets in shard:
                    if src in linear:
                        tensors = calibrated(src) if calibrated is not None else None
                        if tensors is None:
                            weights = np.asarray(ckpt.read(src), dtype=np.float32)
                            _require_finite(weights, src)
                            tensors = fmt.quantize(weights, scheme)
                            del weights
                        module = src.removesuffix(".weight")
                        for t in targets:
                            writer.write(t.name, tensors[t.name.removeprefix(module + ".")])
                        counts["quantized"] += 1
                    else:
                        override = calibrated(src) if calibrated is not None else None
                        kept = np.asarray(ckpt.read(src)) if override is None else override["weight"]
                        writer.write(src, kept.astype(_kept_dtype(kept.dtype, scheme), copy=False))
                        counts["kept"] += 1
                    for t in targets:
                        weight_map[t.name] = fname
                        total += t.nbytes
                    if on_tensor:
                        on_tensor(src)
                writer.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config = dict(ckpt.config)
        config.pop("quantization_config", None)
        config.pop("quantization", None)
        config["torch_dtype"] = scheme.dtype  # the dtype scales and kept tensors are stored in
        config.update(fmt.config(scheme, ["lm_head"]))  # the only Linear we never quantize
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in sorted(ckpt.directory.iterdir()):
            if f.is_file() and f.suffix in COPY_SUFFIXES and f.name not in SKIP_FILES:
                shutil.copyfile(f, tmp / f.name)
        names = sorted(p.name for p in tmp.iterdir())
        digest = hashlib.sha256()  # the directory: every file's bytes, in name order
        files = []
        for name in names:
            file_digest = hashlib.sha256()
            with open(tmp / name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                    file_digest.update(block)
            files.append({"name": name, "bytes": (tmp / name).stat().st_size, "sha256": file_digest.hexdigest()})
    return {
        "ok": True,
        "output": str(output),
        "format": fmt.name,
        "bits": scheme.bits,
        "group_size": scheme.group_size,
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
        "sha256": digest.hexdigest(),
        "tensors": counts,
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_bytes": peak_rss_bytes(),
    }
