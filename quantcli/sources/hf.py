"""An HF checkpoint seen as the GGUF llama.cpp's convert_hf_to_gguf.py writes for it, before any weight is read.

`open_converter_view` opens and validates the checkpoint (every safetensors header, the architecture —
Unsupported before anything else —, the tensor set), then lists every output tensor (GGUF name, shape, type,
and a producer that reads, transforms and returns its values) and builds the complete KV section: the
architecture's hyper-parameters, general.* keys as gguf.Metadata derives them, and the tokenizer keys.
The engine streams the producers into the GGUF writer; the runtime computes with them (types forced to F32).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from quantcli import arch, quants
from quantcli.errors import InputInvalid, Unsupported
from quantcli.gguf_constants import GGMLQuantizationType, LlamaFileType
from quantcli.loaders import FLOAT_DTYPES, Checkpoint, Closing, open_checkpoint
from quantcli.plan.converter import (
    FTYPE_LABEL,
    ConverterTensor,
    choose_tensor_type,
    guess_ftype,
    lossless_ftype,
    parse_out_type,
)
from quantcli.quants.mxfp4 import from_openai_blocks
from quantcli.vocab import read_vocab
from quantcli.writers.gguf import MetadataBuilder, encode_value, tensor_nbytes

TypeRule = Callable[[str, tuple[int, ...], LlamaFileType], GGMLQuantizationType]


@dataclass
class SourceTensor:
    """One output tensor of the converter: GGUF name, NumPy-order shape, type, and its values on demand."""

    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType
    # The stored values as float32 or float16 (a memory-mapped checkpoint's pages are faulted in here), then
    # the architecture's transforms to an array of `shape`: two steps so the engine can time them apart.
    read: Callable[[], np.ndarray]
    transform: Callable[[np.ndarray], np.ndarray] = lambda data: data
    source_name: str = ""
    source_dtype: str = ""
    release: Callable[[], None] | None = None  # drop the checkpoint's mapped pages once the tensor is used
    # True: read/transform give the stored bytes of `type` (uint8 rows), passed through unencoded (MXFP4)
    encoded: bool = False
    # The stored array as it is (BF16: ml_dtypes.bfloat16, memory-mapped) when the output type is the stored
    # dtype and no transform applies: the converter's widen-and-re-encode is then the identity (up to BF16 NaN
    # quieting: writers.gguf.encode_stored), so the engine copies these bits instead.
    read_stored: Callable[[], np.ndarray] | None = None
    # `read` and `read_stored` with file reads into memory of their own (Checkpoint.load: no page fault per
    # page, the GIL released): what the engine's reader thread runs; None where only `read` exists.
    load: Callable[[], np.ndarray] | None = None
    load_stored: Callable[[], np.ndarray] | None = None
    # The stored bytes from an offset into a buffer, and a hint to read them ahead (a tensor with `read_stored`
    # from one safetensors file): the engine streams such a tensor through two buffers instead of reading it
    # whole into fresh memory.
    read_stored_range: Callable[[int, memoryview], None] | None = None
    prefetch: Callable[[], None] | None = None

    def produce(self) -> np.ndarray:
        """The tensor's values (float32 or float16, `shape`)."""
        if self.encoded:
            return quants.dequantize(self.transform(self.read()), self.type, self.shape)
        return self.transform(self.read())

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.type, self.ne)

    def converter_tensor(self) -> ConverterTensor:
        return ConverterTensor(self.name, self.ne, self.type, self.source_dtype)


def _reader(ckpt: Checkpoint, hf_name: str) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        data = ckpt.read(hf_name)
        # The converter works in float32 for everything that is not F16/F32 (BF16 -> F32 is exact).
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        return data

    return read


def _loader(ckpt: Checkpoint, hf_name: str) -> Callable[[], np.ndarray]:
    """`_reader`'s values with file reads (`Checkpoint.load`), BF16 widened to float32 while read."""

    def load() -> np.ndarray:
        data = ckpt.load(hf_name, bf16_as_float32=True)
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        return data

    return load


def _transformer(spec: arch.ArchSpec, hf_name: str, ctx: arch.TransformContext) -> Callable[[np.ndarray], np.ndarray]:
    def transform(data: np.ndarray) -> np.ndarray:
        for step in spec.transforms_for(hf_name):
            data = step.apply(data, ctx)
        return data

    return transform


@dataclass(frozen=True)
class _ExpertMatrix:
    layer: int
    stack: int  # index into spec.expert_stacks
    expert: int


def _expert_matcher(spec: arch.ArchSpec) -> Callable[[str], _ExpertMatrix | None]:
    patterns = [
        re.compile(re.escape(s.hf_template).replace(r"\{bid\}", r"(\d+)").replace(r"\{xid\}", r"(\d+)") + r"\.weight")
        for s in spec.expert_stacks
    ]

    def match(hf_name: str) -> _ExpertMatrix | None:
        for index, pattern in enumerate(patterns):
            m = pattern.fullmatch(hf_name)
            if m:
                return _ExpertMatrix(int(m.group(1)), index, int(m.group(2)))
        return None

    return match


def _stacked_reader(ckpt: Checkpoint, hf_names: list[str], shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    """torch.stack of the experts as the converter does it, but read one expert at a time into one
    preallocated array (float16 when every expert is F16, else float32 as the converter widens BF16), each
    expert's mapped pages released once copied: memory is the stacked tensor plus one expert."""

    def read() -> np.ndarray:
        all_f16 = all(ckpt.tensor_info(n).dtype == "F16" for n in hf_names)
        out = np.empty(shape, np.float16 if all_f16 else np.float32)
        for xid, hf_name in enumerate(hf_names):
            out[xid] = ckpt.read(hf_name)
            ckpt.release(hf_name)
        return out

    return read


def _stacked_stored_reader(ckpt: Checkpoint, hf_names: list[str], shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    """The experts' stored arrays (one dtype, the output type's) stacked as they are, one expert at a time
    into one preallocated array, each expert's mapped pages released once copied: what `read_stored` of a
    dense tensor gives, for a stack (the engine copies these bits instead of widening and re-encoding)."""

    def read() -> np.ndarray:
        first = ckpt.read(hf_names[0])
        out = np.empty(shape, first.dtype)
        for xid, hf_name in enumerate(hf_names):
            out[xid] = first if xid == 0 else ckpt.read(hf_name)
            ckpt.release(hf_name)
        return out

    return read


def _stacked_tensor(
    ckpt: Checkpoint, bid: int, stack: arch.ExpertStack, n_expert: int,
    ftype: LlamaFileType, type_rule: TypeRule,
) -> SourceTensor:
    hf_names = [stack.hf_template.format(bid=bid, xid=xid) + ".weight" for xid in range(n_expert)]
    infos = [ckpt.tensor_info(n) for n in hf_names]
    for hf_name, info in zip(hf_names, infos, strict=True):
        if info.dtype not in FLOAT_DTYPES:
            raise Unsupported(f"{info.file}: tensor {hf_name!r} is {info.dtype}; only F32, F16 and BF16 are converted")
        if info.shape != infos[0].shape or len(info.shape) != 2:
            raise InputInvalid(
                f"{ckpt.directory}: expert tensor {hf_name!r} has shape {list(info.shape)}; expected a matrix "
                f"shaped like {hf_names[0]} {list(infos[0].shape)}"
            )
    gguf_name = stack.gguf_template.format(bid=bid) + ".weight"
    shape = (n_expert, *infos[0].shape)
    dtypes = {i.dtype for i in infos}
    qtype = type_rule(gguf_name, shape, ftype)
    stored_as_output = dtypes == {qtype.name}  # stacks have no transforms
    return SourceTensor(
        gguf_name,
        shape,
        qtype,
        _stacked_reader(ckpt, hf_names, shape),
        source_name=stack.hf_template.format(bid=bid, xid="*") + ".weight",
        source_dtype=dtypes.pop() if len(dtypes) == 1 else "F32",
        read_stored=_stacked_stored_reader(ckpt, hf_names, shape) if stored_as_output else None,
    )


def _split_parts(
    ckpt: Checkpoint, hf_name: str, split: arch.SplitTensor, ftype: LlamaFileType, type_rule: TypeRule
) -> list[SourceTensor]:
    """The GGUF tensors cut from one HF tensor; each reads it (the unit of streaming) and keeps its part,
    the last one releasing the mapped pages."""
    info = ckpt.tensor_info(hf_name)
    if info.dtype not in FLOAT_DTYPES:
        raise Unsupported(f"{info.file}: tensor {hf_name!r} is {info.dtype}; only F32, F16 and BF16 are converted")
    out = []
    for index, part in enumerate(split.parts):
        shape = part.out_shape(info.shape)
        out.append(
            SourceTensor(
                part.gguf_template,
                shape,
                type_rule(part.gguf_template, shape, ftype),
                _reader(ckpt, hf_name),
                lambda data, select=part.select: np.ascontiguousarray(select(data)),
                hf_name,
                info.dtype,
                release=(lambda: ckpt.release(hf_name)) if index == len(split.parts) - 1 else None,
            )
        )
    return out


_MXFP4_PARTS = ("_blocks", "_scales")  # suffixes of equal length


def _is_mxfp4(config: dict[str, Any]) -> bool:
    quantization = config.get("quantization_config")
    return isinstance(quantization, dict) and quantization.get("quant_method") == "mxfp4"


def _releaser(ckpt: Checkpoint, *hf_names: str) -> Callable[[], None]:
    def release() -> None:
        for name in hf_names:
            ckpt.release(name)

    return release


def _mxfp4_reader(ckpt: Checkpoint, blocks_name: str, scales_name: str, rows: slice) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        return from_openai_blocks(ckpt.read(blocks_name)[:, rows], ckpt.read(scales_name)[:, rows])

    return read


def _mxfp4_tensors(ckpt: Checkpoint, spec: arch.ArchSpec, cfg: dict[str, Any]) -> tuple[list[SourceTensor], set[str]]:
    """The packed expert tensors of an MXFP4 checkpoint as GptOssModel.generate_extra_tensors writes them
    (each once its `_scales` is reached in checkpoint order, before every other tensor), and the HF names
    they consume. Each reads its blocks and scales (one stacked tensor, the unit of streaming) and
    repacks the layout; the values are never decoded."""
    packed = {
        entry.hf_template.format(bid=bid): (entry, bid)
        for entry in spec.mxfp4_experts
        for bid in range(spec.block_count(cfg))
    }
    names = set(ckpt.tensor_names())
    tensors: list[SourceTensor] = []
    consumed: set[str] = set()
    for hf_name in ckpt.tensor_names():
        if not hf_name.endswith("_scales") or hf_name[: -len("_scales")] not in packed:
            continue
        base = hf_name[: -len("_scales")]
        entry, bid = packed[base]
        blocks_name = base + "_blocks"
        if blocks_name not in names:
            raise InputInvalid(f"{ckpt.directory}: MXFP4 tensor {hf_name!r} has no {blocks_name!r}")
        blocks, scales = ckpt.tensor_info(blocks_name), ckpt.tensor_info(hf_name)
        n_out = len(entry.gguf_templates)
        if (
            blocks.dtype != "U8" or scales.dtype != "U8" or len(blocks.shape) != 4 or blocks.shape[-1] != 16
            or tuple(scales.shape) != tuple(blocks.shape[:-1]) or blocks.shape[1] % n_out or 0 in blocks.shape
        ):
            raise InputInvalid(
                f"{ckpt.directory}: MXFP4 tensors {blocks_name!r} {blocks.dtype} {list(blocks.shape)} and "
                f"{hf_name!r} {scales.dtype} {list(scales.shape)}; expected uint8 (experts, rows, blocks, 16) "
                "and (experts, rows, blocks)"
            )
        n_expert, rows, n_blocks, _ = blocks.shape
        for index, template in enumerate(entry.gguf_templates):
            tensors.append(
                SourceTensor(
                    template.format(bid=bid),
                    (n_expert, rows // n_out, n_blocks * 32),
                    GGMLQuantizationType.MXFP4,
                    _mxfp4_reader(ckpt, blocks_name, hf_name, slice(index, None, n_out)),
                    source_name=base,
                    source_dtype="MXFP4",
                    encoded=True,
                    release=_releaser(ckpt, blocks_name, hf_name) if index == n_out - 1 else None,
                )
            )
        consumed |= {blocks_name, hf_name}
    stray = sorted(n for n in names - consumed if n.endswith(_MXFP4_PARTS) and n[: -len(_MXFP4_PARTS[0])] in packed)
    if stray:
        raise InputInvalid(f"{ckpt.directory}: MXFP4 tensor {stray[0]!r} has no matching scales")
    return tensors, consumed


def checkpoint_tensors(
    ckpt: Checkpoint, spec: arch.ArchSpec, cfg: dict[str, Any], ftype: LlamaFileType, type_rule: TypeRule
) -> list[SourceTensor]:
    """Every output tensor in the converter's order (extra generated tensors first), typed by `type_rule`.

    Mixture of experts: a layer's per-expert matrices become one stacked tensor per `spec.expert_stacks`
    entry, listed where the converter writes them: right after the layer's last expert matrix is seen.
    """
    match_expert = _expert_matcher(spec)
    experts = {n: e for n in ckpt.tensor_names() if (e := match_expert(n)) is not None}
    mxfp4, packed_names = _mxfp4_tensors(ckpt, spec, cfg) if spec.mxfp4_experts else ([], set())
    shapes = {
        n: ckpt.tensor_info(n).shape
        for n in ckpt.tensor_names()
        if not spec.is_skipped(n) and n not in experts and n not in packed_names
    }
    arch.check_layer_count(spec, cfg, len(shapes))
    names = spec.name_map(cfg)
    splits = spec.split_map(cfg)
    arch.check_tensors(spec, cfg, shapes, names, str(ckpt.directory))
    n_expert = arch.expert_count(cfg) if experts else None
    if experts and (n_expert is None or n_expert <= 0):
        raise InputInvalid(f"{ckpt.directory / 'config.json'}: expert tensors but no positive expert count")
    seen_per_layer: dict[int, int] = {}
    tensors: list[SourceTensor] = []
    for gguf_name, array in spec.extra_tensors(cfg) if spec.extra_tensors is not None else []:
        qtype = type_rule(gguf_name, tuple(array.shape), ftype)
        tensors.append(
            SourceTensor(gguf_name, tuple(array.shape), qtype, lambda array=array: array, source_dtype="F32")
        )
    tensors += mxfp4
    for hf_name in ckpt.tensor_names():
        if spec.is_skipped(hf_name) or hf_name in packed_names:
            continue
        expert = experts.get(hf_name)
        if expert is not None:
            assert n_expert is not None
            if expert.expert >= n_expert or expert.layer >= spec.block_count(cfg):
                raise InputInvalid(
                    f"{ckpt.directory}: tensor {hf_name!r} is outside the {n_expert} experts and "
                    f"{spec.block_count(cfg)} layers config.json describes"
                )
            seen = seen_per_layer[expert.layer] = seen_per_layer.get(expert.layer, 0) + 1
            if seen == n_expert * len(spec.expert_stacks):
                tensors += [
                    _stacked_tensor(ckpt, expert.layer, stack, n_expert, ftype, type_rule)
                    for stack in spec.expert_stacks
                ]
            continue
        split = splits.get(hf_name)
        if split is not None:
            tensors += _split_parts(ckpt, hf_name, split, ftype, type_rule)
            continue
        gguf_name = names.get(hf_name)
        if gguf_name is None:
            raise Unsupported(f"{ckpt.directory}: tensor {hf_name!r} has no GGUF name in the {spec.gguf_arch} table")
        info = ckpt.tensor_info(hf_name)
        if info.dtype not in FLOAT_DTYPES:
            raise Unsupported(f"{info.file}: tensor {hf_name!r} is {info.dtype}; only F32, F16 and BF16 are converted")
        ctx = arch.TransformContext(config=cfg, hf_name=hf_name, directory=ckpt.directory)
        shape = info.shape
        transforms = list(spec.transforms_for(hf_name))
        for transform in transforms:
            if transform.out_shape is not None:
                shape = transform.out_shape(shape, ctx)
        qtype = type_rule(gguf_name, shape, ftype)
        # Kept at its stored type: the stored bits are the output's, reordered where the transforms only reorder.
        stored_as_output = all(t.reorders_only for t in transforms) and qtype.name == info.dtype
        apply_transforms = _transformer(spec, hf_name, ctx)
        tensors.append(
            SourceTensor(
                gguf_name,
                shape,
                qtype,
                _reader(ckpt, hf_name),
                apply_transforms,
                hf_name,
                info.dtype,
                release=lambda hf_name=hf_name: ckpt.release(hf_name),
                read_stored=(
                    (lambda hf_name=hf_name, f=apply_transforms: f(ckpt.read(hf_name))) if stored_as_output else None
                ),
                load=_loader(ckpt, hf_name),
                load_stored=(
                    (lambda hf_name=hf_name, f=apply_transforms: f(ckpt.load(hf_name))) if stored_as_output else None
                ),
                read_stored_range=(
                    (lambda start, out, hf_name=hf_name: ckpt.read_range(hf_name, start, out))
                    if stored_as_output and not transforms else None
                ),
                prefetch=lambda hf_name=hf_name: ckpt.prefetch(hf_name),
            )
        )
    incomplete = sorted(b for b, seen in seen_per_layer.items() if seen < (n_expert or 0) * len(spec.expert_stacks))
    if incomplete:
        raise InputInvalid(f"{ckpt.directory}: layer {incomplete[0]} lacks some of its {n_expert} experts' matrices")
    if not tensors:
        raise InputInvalid(f"{ckpt.directory}: no tensors to convert")
    return tensors


def _general_metadata(meta_out: MetadataBuilder, directory: Path) -> None:
    """general.* keys exactly as convert_hf_to_gguf.py derives them (gguf.Metadata from config/README)."""
    total, shared, expert, expert_count = meta_out.parameter_count()
    meta = gguf.Metadata.load(None, directory, None, total)
    if meta.sampling_penalty_repeat is None:
        # llama.cpp's vendored gguf-py also reads HF's name for it.
        gen = directory / "generation_config.json"
        if gen.is_file():
            try:
                meta.sampling_penalty_repeat = json.loads(gen.read_text(encoding="utf-8")).get("repetition_penalty")
            except (OSError, ValueError):
                pass  # the converter ignores an unreadable generation_config.json too
    if meta.name is None:
        meta.name = directory.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, expert_count)
    meta_out.writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(meta_out.writer)


def _check_encodable(meta: MetadataBuilder, config_path: Path) -> None:
    """Every value taken from config.json must fit its GGUF type now, not fail while the file is written
    (rope_theta "x" for a FLOAT32, max_position_embeddings -1 for a UINT32)."""
    for key, item in meta.items():
        try:
            encode_value(item.value, item.type, item.sub_type)
        except (struct.error, TypeError, ValueError, OverflowError):
            raise InputInvalid(
                f"{config_path}: {item.value!r} is not a valid {item.type.name.lower()} for GGUF key {key}"
            ) from None


@dataclass
class ConverterView(Closing):
    """What convert_hf_to_gguf.py would write for a checkpoint: every tensor and the complete KV section.
    Holds the open checkpoint (use as a context manager)."""

    ckpt: Checkpoint
    spec: arch.ArchSpec
    cfg: dict[str, Any]
    ftype: LlamaFileType
    tensors: list[SourceTensor]
    metadata: MetadataBuilder

    @property
    def label(self) -> str:
        return FTYPE_LABEL[self.ftype]

    @property
    def architecture(self) -> str:
        return self.spec.gguf_arch

    def close(self) -> None:
        self.ckpt.close()


def _matrix_dtypes(ckpt: Checkpoint, spec: arch.ArchSpec) -> list[str]:
    infos = [ckpt.tensor_info(n) for n in ckpt.tensor_names() if not spec.is_skipped(n)]
    return [i.dtype for i in infos if len(i.shape) >= 2]


def open_converter_view(
    source: Path | str,
    out_type: str = "auto",
    type_rule: TypeRule = choose_tensor_type,
    before_plan: Callable[[Checkpoint, LlamaFileType], None] | None = None,
) -> ConverterView:
    """Open `source` and plan the converter's output for `out_type` ("auto"/"f32"/"f16"/"bf16"/"q8_0", or
    "lossless": the type that keeps the checkpoint's values). `before_plan(ckpt, ftype)` runs once the type is
    known, before the tensors and the tokenizer are read (the engine checks the output path there)."""
    ckpt = open_checkpoint(source)
    try:
        spec = arch.get_arch(ckpt.config, where=str(ckpt.directory / "config.json"))
        cfg = arch.effective_config(spec, ckpt.config)
        if out_type == "lossless":
            ftype = lossless_ftype(_matrix_dtypes(ckpt, spec))
        else:
            chosen = parse_out_type(out_type)
            ftype = guess_ftype(_matrix_dtypes(ckpt, spec)) if chosen is None else chosen
        if before_plan is not None:
            before_plan(ckpt, ftype)
        cfg["__ftype__"] = ftype
        tensors = checkpoint_tensors(ckpt, spec, cfg, ftype, type_rule)
        if _is_mxfp4(ckpt.config) and ftype in (LlamaFileType.ALL_F32, LlamaFileType.MOSTLY_F16,
                                                LlamaFileType.MOSTLY_BF16):
            # ModelBase.prepare_metadata: an MXFP4 checkpoint written at a float type is labelled MXFP4_MOE
            cfg["__ftype__"] = LlamaFileType.MOSTLY_MXFP4_MOE
        vocab = read_vocab(ckpt.directory, ckpt.config).entries

        meta = MetadataBuilder(spec.gguf_arch)
        for method, value in arch.hparam_values(spec, cfg, early=True):
            meta.call(method, value)
        for t in tensors:
            meta.add_tensor_info(t.name, t.shape, t.type)
        _general_metadata(meta, ckpt.directory)
        for method, value in arch.hparam_values(spec, cfg):
            meta.call(method, value)
        meta.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _check_encodable(meta, ckpt.directory / "config.json")
        for entry in vocab:
            meta.add_kv(entry.key, entry.value, entry.vtype, entry.sub_type)
    except BaseException:
        ckpt.close()
        raise
    return ConverterView(ckpt, spec, cfg, ftype, tensors, meta)


@contextmanager
def runtime_view(directory: Path | str) -> Iterator[ConverterView]:
    """The checkpoint with every tensor typed F32: the values a lossless conversion stores, for the runtime."""
    with open_converter_view(directory, "f32", lambda name, shape, ftype: GGMLQuantizationType.F32) as view:
        yield view
