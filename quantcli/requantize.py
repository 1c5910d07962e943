"""llama-quantize's output, byte for byte: GGUF -> GGUF (`quantize_gguf`, = `llama-quantize IN OUT TYPE`,
llama_model_quantize_impl) and HF checkpoint -> GGUF in one pass (`quantize_checkpoint`, = the converter at
the checkpoint's precision followed by llama-quantize). Both feed one writer, `write_gguf`.

Output layout (spec §5.7): the input's KV pairs in input order, minus `general.quantization_version`,
`general.file_type` and the split keys, then `general.quantization_version` (u32 2) and
`general.file_type` (u32 ftype) appended, then the `quantize.imatrix.*` keys when an imatrix is used;
tensors sorted by (layer, name); each tensor's data padded to 32 bytes. Tensors are processed one at a
time in row slabs, so memory stays bounded whatever the model size; the output is written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantcli import quants
from quantcli.atomic import atomic_path, check_output
from quantcli.errors import InputInvalid, Unsupported, UsageError
from quantcli.imatrix_file import Imatrix, load_imatrix
from quantcli.loaders import Checkpoint
from quantcli.loaders.gguf import GGUFFile
from quantcli.plan import ModelInfo, Overrides, Plan, TensorDecision, TensorSpec, make_plan, n_dims, pad
from quantcli.plan.ftypes import Ftype
from quantcli.writers.gguf import PlannedTensor, encode

GGML_QNT_VERSION = 2
ALIGNMENT = 32  # gguf_init_empty(): the output context ignores any general.alignment of the input
_REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")
# Rows are converted to float32 in slabs of at most this many elements (16 MiB of float32).
_SLAB_ELEMENTS = 4 << 20

_T = GGMLQuantizationType


def encode_string(s: str | bytes) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def encode_kv_u32(key: str, value: int) -> bytes:
    return encode_string(key) + struct.pack("<iI", 4, value)  # GGUF_TYPE_UINT32 = 4


def encode_kv_str(key: str, value: str | bytes) -> bytes:
    return encode_string(key) + struct.pack("<i", 8) + encode_string(value)  # GGUF_TYPE_STRING = 8


def _c_string_127(s: str) -> bytes:
    """strncpy(dst, s, 127); dst[127] = 0: at most 127 bytes, cut at the first NUL."""
    return s.encode("utf-8")[:127].split(b"\0", 1)[0]


@dataclass
class ImatrixUse:
    """An imatrix as llama-quantize applies it: entries after --include/--exclude-weights, and the path
    string exactly as given on the command line (it is written to quantize.imatrix.file)."""

    imatrix: Imatrix
    path_text: str

    def kv_pairs(self) -> list[tuple[str, bytes]]:
        im = self.imatrix
        pairs = [
            ("quantize.imatrix.file", encode_kv_str("quantize.imatrix.file", _c_string_127(self.path_text)))
        ]
        if im.datasets:
            key = "quantize.imatrix.dataset"
            pairs.append((key, encode_kv_str(key, _c_string_127(im.datasets[0]))))
        key = "quantize.imatrix.entries_count"
        pairs.append((key, encode_kv_u32(key, len(im.entries))))
        if im.chunk_count > 0:
            key = "quantize.imatrix.chunks_count"
            pairs.append((key, encode_kv_u32(key, im.chunk_count)))
        return pairs


def load_imatrix_use(
    path_text: str | None, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> ImatrixUse | None:
    """--imatrix/--include-weights/--exclude-weights -> the entries llama-quantize would use (or None)."""
    if path_text is None:
        if include or exclude:
            raise UsageError("--include-weights/--exclude-weights need --imatrix")
        return None
    if include and exclude:
        raise UsageError("--include-weights and --exclude-weights cannot be combined")
    return ImatrixUse(load_imatrix(path_text).filtered(include, exclude), path_text)


def output_kv(
    src_kv: Iterable[tuple[str, bytes]], ftype: Ftype, imatrix: ImatrixUse | None, kv_overrides: Sequence = ()
) -> list[tuple[str, bytes]]:
    """The output KV section as (key, encoded bytes), in llama-quantize's order (gguf_set_* = remove+append),
    from the source's KV pairs (key, encoded bytes) in file order."""
    kv: dict[str, bytes] = dict(src_kv)

    def set_kv(key: str, raw: bytes) -> None:
        kv.pop(key, None)
        kv[key] = raw

    set_kv("general.quantization_version", encode_kv_u32("general.quantization_version", GGML_QNT_VERSION))
    set_kv("general.file_type", encode_kv_u32("general.file_type", ftype.value))
    for key in _REMOVED_KEYS:
        kv.pop(key, None)
    for override in kv_overrides:  # --override-kv, then the imatrix keys (quantize.cpp's kv_overrides order)
        set_kv(override.key, override.encode())
    if imatrix is not None:
        for key, raw in imatrix.kv_pairs():
            set_kv(key, raw)
    return list(kv.items())


def gguf_kv(src: GGUFFile) -> list[tuple[str, bytes]]:
    """A GGUF file's KV pairs as (key, encoded bytes), in file order."""
    return [(key, item.raw) for key, item in src.kv.items()]


def source_specs(src: GGUFFile) -> list[TensorSpec]:
    return [TensorSpec(t.name, t.ne, t.type) for t in src.tensors.values()]


def plan_for_gguf(src: GGUFFile, ftype: Ftype, overrides: Overrides) -> Plan:
    # llama-quantize loads the model's hyper-parameters first: refuse what it could not load.
    arch = src.architecture
    if not src.tensors:
        raise InputInvalid(f"{src.path}: the file has no tensors")
    if not isinstance(src.get(f"{arch}.block_count"), int):
        raise InputInvalid(f"{src.path}: {arch}.block_count is missing")
    metadata = {k: v.value for k, v in src.kv.items()}
    for override in overrides.kv_overrides:  # the loader reads hyper-parameters through the overrides
        metadata[override.key] = override.loader_value
    model = ModelInfo.from_metadata(metadata)
    return make_plan(model, source_specs(src), ftype, overrides)


def predicted_file_size(src: GGUFFile, plan: Plan, imatrix: ImatrixUse | None) -> int:
    kv = output_kv(gguf_kv(src), plan.recipe, imatrix, plan.overrides.kv_overrides)
    return plan.file_size(sum(len(raw) for _, raw in kv))


def metadata_bytes(kv: Sequence[tuple[str, bytes]], plan: Plan) -> bytes:
    """Header + KVs + tensor infos, zero-padded to the alignment (gguf_get_meta_data)."""
    parts = [b"GGUF", struct.pack("<Iqq", 3, len(plan.decisions), len(kv))]
    parts.extend(raw for _, raw in kv)
    offset = 0
    for d in plan.decisions:
        dims = n_dims(d.ne)
        parts.append(encode_string(d.name))
        parts.append(struct.pack(f"<I{dims}qiQ", dims, *d.ne[:dims], int(d.type), offset))
        offset += pad(d.nbytes, ALIGNMENT)
    meta = b"".join(parts)
    return meta + b"\0" * (pad(len(meta), ALIGNMENT) - len(meta))


@dataclass
class QuantizeResult:
    path: Path
    plan: Plan
    file_size: int
    seconds: float
    imatrix_missing: list[str] = field(default_factory=list)
    sha256: str = ""


def check_plan_executable(
    plan: Plan, imatrix: ImatrixUse | None, allow_requantize: bool, strict: bool
) -> list[str]:
    """Everything that can fail is checked here, before any output or compute. Returns the names of
    quantized tensors the imatrix has no entry for (llama-quantize quantizes those without one)."""
    if strict:
        plan.refuse_fallbacks()
    for d in plan.decisions:
        if d.ne[0] % GGML_QUANT_SIZES[d.type][0]:
            # Only reachable through --output-tensor-type / --token-embedding-type, which llama.cpp applies
            # without the fallback check (llama-quantize then aborts mid-file).
            raise UsageError(
                f"{d.name}: row length {d.ne[0]} is not a multiple of {d.type.name}'s block size "
                f"{GGML_QUANT_SIZES[d.type][0]} ({d.reason})"
            )
        if d.changes:
            quants.get(d.type)  # Unsupported if no quantizer for the target type
            if d.src_type not in (_T.F32, _T.F16, _T.BF16) and not allow_requantize:
                raise Unsupported(
                    f"{d.name} is already {d.src_type.name}: requantizing is disabled (use --allow-requantize)"
                )
            if d.src_type not in (_T.F32, _T.F16, _T.BF16):
                quants.get(d.src_type)
    missing: list[str] = []
    if imatrix is not None:
        shapes = [(d.name, d.ne) for d in plan.decisions]
        missing = imatrix.imatrix.check_against(shapes, [d.name for d in plan.decisions if d.changes])
    for d in plan.decisions:
        if d.requires_imatrix and (imatrix is None or (d.changes and d.name not in imatrix.imatrix.entries)):
            raise UsageError(
                f"{plan.recipe.name} requires an importance matrix for {d.name} ({d.type.name}): pass --imatrix"
            )
    return missing


def _rows_to_f32(raw: np.ndarray, qtype: GGMLQuantizationType, nrows: int, ncols: int) -> np.ndarray:
    if qtype == _T.F32:
        return raw.view("<f4").reshape(nrows, ncols)
    if qtype == _T.F16:
        return raw.view("<f2").astype(np.float32).reshape(nrows, ncols)
    return quants.dequantize(raw, qtype, (nrows, ncols))


class TensorBytes(Protocol):
    """Where the writer gets each source tensor's stored bytes: a GGUF file (`GGUFFile`), or an HF checkpoint
    producing, one tensor at a time, the bytes convert_hf_to_gguf.py would store (`CheckpointTensors`)."""

    def tensor_bytes(self, name: str) -> np.ndarray: ...

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None: ...


class CheckpointTensors:
    """The tensors of the GGUF convert_hf_to_gguf.py writes at the checkpoint's own precision, made in memory
    one at a time: read -> architecture transform -> float32 -> encoded as the converter stores it.

    The writer then sees exactly the bytes llama-quantize would read from that file (BF16 keeps every BF16
    value, so decoding them gives the same float32 inputs the two-step pipeline quantizes), and no
    intermediate file exists. Only the current tensor is held.
    """

    def __init__(self, planned: Sequence[PlannedTensor]) -> None:
        self.by_name = {t.name: t for t in planned}
        self._name: str | None = None
        self._raw: np.ndarray | None = None

    def tensor_bytes(self, name: str) -> np.ndarray:
        if self._name == name and self._raw is not None:
            return self._raw
        self._drop()
        tensor = self.by_name[name]
        data = tensor.produce()
        if tuple(data.shape) != tensor.shape:
            raise InputInvalid(f"{tensor.name}: produced shape {data.shape}, planned {tensor.shape}")
        raw = encode(data, tensor.qtype, tensor.name)
        del data
        if tensor.release is not None:
            tensor.release()  # drop the checkpoint's mapped pages: only the encoded copy is kept
        self._name, self._raw = name, np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        return self._raw

    def release(self, name: str, begin: int = 0, end: int | None = None) -> None:
        if end is None and begin == 0 and self._name == name:  # the whole tensor is written
            self._drop()

    def _drop(self) -> None:
        self._name, self._raw = None, None


def _rows_to_f32(raw: np.ndarray, qtype: GGMLQuantizationType, nrows: int, ncols: int) -> np.ndarray:
    if qtype == _T.F32:
        return raw.view("<f4").reshape(nrows, ncols)
    if qtype == _T.F16:
        return raw.view("<f2").astype(np.float32).reshape(nrows, ncols)
    return quants.dequantize(raw, qtype, (nrows, ncols))


def _write_tensor(
    fh: BinaryIO,
    src: TensorBytes,
    d: TensorDecision,
    weights: np.ndarray | None,
    threads: int | None,
    tensor_cache: Any = None,
) -> int:
    """Write one tensor's new bytes (without padding): copied if its type stays, else re-encoded in
    row slabs (per expert for 3-D tensors, each with its own imatrix slice)."""
    raw = src.tensor_bytes(d.name)
    if not d.changes:
        fh.write(raw)
        return raw.size
    key = None
    if tensor_cache is not None:  # --resume: the quantized bytes depend on the source bytes, type, imatrix
        key = tensor_cache.key(raw, d.type, weights, ne=list(d.ne), src_type=d.src_type.name)
        hit = tensor_cache.get(key)
        if hit is not None:
            fh.write(hit)
            return len(hit)
    ne = d.ne
    ncols = ne[0]
    rows_per_matrix = ne[1] if len(ne) > 1 else 1
    n_matrices = math.prod(ne[2:])
    block, size = GGML_QUANT_SIZES[d.src_type]
    src_row = ncols // block * size
    per_expert_weights = weights is not None and len(ne) > 2 and weights.size == ncols * ne[2]
    step = max(1, _SLAB_ELEMENTS // ncols)
    written = 0
    parts: list[bytes] | None = [] if key is not None else None
    for m in range(n_matrices):
        im = weights
        if per_expert_weights:
            im = weights[m * ncols : (m + 1) * ncols]  # type: ignore[index]
        for r0 in range(0, rows_per_matrix, step):
            r1 = min(r0 + step, rows_per_matrix)
            first = m * rows_per_matrix + r0
            begin, end = first * src_row, (first + r1 - r0) * src_row
            rows = _rows_to_f32(raw[begin:end], d.src_type, r1 - r0, ncols)
            out = quants.quantize(rows, d.type, im, name=d.name, threads=threads)
            encoded = out.tobytes()
            fh.write(encoded)
            if parts is not None:
                parts.append(encoded)
            written += out.size
            del rows
            src.release(d.name, begin, end)
    if key is not None and parts is not None:
        tensor_cache.put(key, b"".join(parts))
    return written


class _HashingFile:
    """A binary file that hashes what is written to it (the --json sha256 without reading the file back)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> int:
        view = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else memoryview(
            np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        )
        self.digest.update(view)
        return self.fh.write(view)

    def tell(self) -> int:
        return self.fh.tell()


def write_gguf(
    out_path: Path,
    kv: Sequence[tuple[str, bytes]],
    plan: Plan,
    src: TensorBytes,
    *,
    imatrix: ImatrixUse | None = None,
    threads: int | None = None,
    force: bool = False,
    on_tensor: Callable[[TensorDecision, int, int], None] | None = None,
    tensor_cache: Any = None,
) -> tuple[int, str]:
    """llama-quantize's output file for `plan`: metadata, then every tensor in plan order, each padded to
    32 bytes; written atomically. The one writer for GGUF and HF sources. Returns (size, sha256)."""
    meta = metadata_bytes(kv, plan)
    total = len(plan.decisions)
    with atomic_path(out_path, force) as tmp, open(tmp, "wb") as raw_fh:
        fh = _HashingFile(raw_fh)
        fh.write(meta)
        for i, d in enumerate(plan.decisions):
            weights = None
            if imatrix is not None and d.changes:
                weights = imatrix.imatrix.weights_for(d.name, d.ne)
            n = _write_tensor(fh, src, d, weights, threads, tensor_cache)  # type: ignore[arg-type]
            src.release(d.name)
            assert n == d.nbytes, f"{d.name}: wrote {n} bytes, expected {d.nbytes}"
            fh.write(b"\0" * (pad(n, ALIGNMENT) - n))
            if on_tensor is not None:
                on_tensor(d, i + 1, total)
        size = fh.tell()
        expected = plan.file_size(sum(len(raw) for _, raw in kv))
        assert size == expected, f"wrote {size} bytes, plan predicted {expected}"
        sha256 = fh.digest.hexdigest()
    return size, sha256


def quantize_gguf(
    src_path: str | Path,
    out_path: str | Path,
    ftype: Ftype,
    overrides: Overrides | None = None,
    *,
    imatrix: ImatrixUse | None = None,
    strict: bool = False,
    allow_requantize: bool = False,
    threads: int | None = None,
    force: bool = False,
    on_tensor: Callable[[TensorDecision, int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize a GGUF file like llama-quantize. All checks run before the output is created."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    overrides = overrides or Overrides()
    if imatrix is not None and not imatrix.imatrix.entries:
        imatrix = None  # llama-quantize: an imatrix with no (remaining) entries is not used at all
    overrides = dataclasses.replace(overrides, has_imatrix=imatrix is not None)  # the caller's stays as is
    check_output(out_path, force)
    with GGUFFile(src_path) as src:
        if Path(src_path).resolve() == out_path.resolve():
            raise UsageError("input and output files are the same")
        plan = plan_for_gguf(src, ftype, overrides)
        missing = check_plan_executable(plan, imatrix, allow_requantize, strict)
        kv = output_kv(gguf_kv(src), ftype, imatrix, overrides.kv_overrides)
        size, sha256 = write_gguf(
            out_path, kv, plan, src, imatrix=imatrix, threads=threads, force=force, on_tensor=on_tensor
        )
    return QuantizeResult(out_path, plan, size, time.perf_counter() - t0, missing, sha256)


@dataclass
class CheckpointPlan:
    """An HF checkpoint planned as the GGUF convert_hf_to_gguf.py writes at its own precision, then
    through llama-quantize's rules: the plan, the output KV section and the tensor producers. Holds the
    open checkpoint: use as a context manager."""

    ckpt: Checkpoint
    arch: str
    source_type: str  # the converter --outtype this stands for: "bf16", "f16" or "f32"
    planned: list[PlannedTensor]
    plan: Plan
    kv: list[tuple[str, bytes]]
    imatrix: ImatrixUse | None

    @property
    def file_size(self) -> int:
        return self.plan.file_size(sum(len(raw) for _, raw in self.kv))

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self) -> CheckpointPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plan_checkpoint(
    source: str | Path, ftype: Ftype, overrides: Overrides, imatrix: ImatrixUse | None
) -> CheckpointPlan:
    """Open and plan an HF checkpoint (no weight is read). `overrides.has_imatrix` must already say
    whether `imatrix` is used."""
    from quantcli.convert import converter_view

    view = converter_view(source, "source")
    try:
        raw_kv = view.output.encoded_kv()
        metadata = view.output.kv_values()
        for override in overrides.kv_overrides:  # the loader reads hyper-parameters through the overrides
            metadata[override.key] = override.loader_value
        model = ModelInfo.from_metadata(metadata)
        specs = [TensorSpec.from_numpy_shape(t.name, t.shape, t.qtype) for t in view.planned]
        plan = make_plan(model, specs, ftype, overrides)
        kv = output_kv(raw_kv, ftype, imatrix, overrides.kv_overrides)
    except BaseException:
        view.ckpt.close()
        raise
    return CheckpointPlan(
        view.ckpt, view.spec.gguf_arch, view.label.lower(), view.planned, plan, kv, imatrix
    )


def quantize_checkpoint(
    source: str | Path,
    out_path: str | Path,
    ftype: Ftype,
    overrides: Overrides | None = None,
    *,
    imatrix: ImatrixUse | None = None,
    strict: bool = False,
    threads: int | None = None,
    force: bool = False,
    on_tensor: Callable[[TensorDecision, int, int], None] | None = None,
    tensor_cache: Any = None,
) -> QuantizeResult:
    """HF checkpoint -> llama-quantize recipe in one pass, byte-identical to
    `convert_hf_to_gguf.py --outtype <source precision>` followed by `llama-quantize F.gguf OUT TYPE`.

    The source precision is the checkpoint's (bf16 for BF16 weights, f16 for F16, f32 otherwise): that
    intermediate is lossless, so quantizing straight from the checkpoint's values is the two-step
    pipeline. Every check (types, patterns, --strict, imatrix fit) runs before the output is created;
    then each tensor is read, transformed, quantized and written in turn: no intermediate file, memory
    bounded by the largest tensor.
    """
    t0 = time.perf_counter()
    out_path = Path(out_path)
    overrides = overrides or Overrides()
    if imatrix is not None and not imatrix.imatrix.entries:
        imatrix = None
    overrides = dataclasses.replace(overrides, has_imatrix=imatrix is not None)  # the caller's stays as is
    check_output(out_path, force)
    with plan_checkpoint(source, ftype, overrides, imatrix) as cp:
        missing = check_plan_executable(cp.plan, imatrix, allow_requantize=False, strict=strict)
        size, sha256 = write_gguf(
            out_path,
            cp.kv,
            cp.plan,
            CheckpointTensors(cp.planned),
            imatrix=imatrix,
            threads=threads,
            force=force,
            on_tensor=on_tensor,
            tensor_cache=tensor_cache,
        )
    return QuantizeResult(out_path, cp.plan, size, time.perf_counter() - t0, missing, sha256)
