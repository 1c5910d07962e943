"""HF checkpoint -> GGUF, tensor for tensor and key for key what llama.cpp's convert_hf_to_gguf.py writes.

Python API (used by the CLI and by batch):

    convert_model(source, output, out_type="auto", force=False, threads=None, progress=False) -> dict

Order of work: open + validate every safetensors header, resolve the architecture (Unsupported before
any weight is read), check the output path, read the tokenizer, plan every tensor (name, shape, type),
build the metadata, then stream: read one tensor (memory map), transform, encode, write, drop it.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType

from quantcli.arch import (
    ArchSpec,
    TransformContext,
    check_layer_count,
    check_tensors,
    effective_config,
    get_arch,
    hparam_values,
)
from quantcli.atomic import check_output
from quantcli.console import peak_rss_bytes
from quantcli.errors import InputInvalid, Unsupported, UsageError
from quantcli.loaders import FLOAT_DTYPES, Checkpoint, open_checkpoint
from quantcli.writers.gguf import GGUFOutput, PlannedTensor

OUT_TYPES: dict[str, LlamaFileType | None] = {
    "auto": None,
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}

FTYPE_TENSOR_TYPE: dict[LlamaFileType, GGMLQuantizationType] = {
    LlamaFileType.ALL_F32: GGMLQuantizationType.F32,
    LlamaFileType.MOSTLY_F16: GGMLQuantizationType.F16,
    LlamaFileType.MOSTLY_BF16: GGMLQuantizationType.BF16,
    LlamaFileType.MOSTLY_Q8_0: GGMLQuantizationType.Q8_0,
}

# convert_hf_to_gguf.py keeps these GGUF tensors in F32 whatever --outtype says (the subset of its list
# that exists in the architectures we support, plus the generic rules in `choose_tensor_type`).
ALWAYS_F32 = ("ffn_gate_inp", "position_embd", "token_types")

# What gguf.GGUFWriter's file-name convention calls each file type (also our default output suffix).
FTYPE_LABEL = {
    LlamaFileType.ALL_F32: "F32",
    LlamaFileType.MOSTLY_F16: "F16",
    LlamaFileType.MOSTLY_BF16: "BF16",
    LlamaFileType.MOSTLY_Q8_0: "Q8_0",
}


@dataclass(frozen=True)
class TensorChoice:
    """What the type decision sees about one output tensor."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # NumPy order (rows..., row length)
    ftype: LlamaFileType


def choose_tensor_type(t: TensorChoice) -> GGMLQuantizationType:
    """convert_hf_to_gguf.py's per-tensor rule (ModelBase.prepare_tensors), for the supported ftypes.

    1-D tensors and `*_norm.weight` -> F32; biases and other non-`.weight` tensors -> F32; router /
    position / token-type embeddings -> F32; everything else (token_embd and output included) -> the
    ftype's type. Q8_0 of a row length that is not a multiple of 32 falls back to F16 (gguf.QuantError).
    """
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    base = t.name.rsplit(".", 1)[0].split(".")[-1]
    if base in ALWAYS_F32 or not t.name.endswith(".weight"):
        return GGMLQuantizationType.F32
    qtype = FTYPE_TENSOR_TYPE[t.ftype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if t.shape[-1] % block:
        return GGMLQuantizationType.F16
    return qtype


def default_output_name(source: Path, ftype: LlamaFileType, stem: str | None = None) -> Path:
    """`<model dir name>-<TYPE>.gguf` in the current directory (never inside the input directory)."""
    source = Path(source).resolve()
    stem = stem or (source.name if source.is_dir() else source.parent.name)
    return Path.cwd() / f"{stem or 'model'}-{FTYPE_LABEL[ftype]}.gguf"


def guess_ftype(ckpt: Checkpoint, names: list[str]) -> LlamaFileType:
    """--type auto: the converter's heuristic on the first tensor with >= 2 dims (BF16 stays BF16)."""
    for name in names:
        info = ckpt.tensor_info(name)
        if len(info.shape) < 2:
            continue
        if info.dtype == "BF16":
            return LlamaFileType.MOSTLY_BF16
        if info.dtype == "F16":
            return LlamaFileType.MOSTLY_F16
        break
    return LlamaFileType.MOSTLY_F16  # F32 checkpoints: the converter writes F16 (documented)


def resolve_ftype(out_type: str, ckpt: Checkpoint, names: list[str]) -> LlamaFileType:
    key = out_type.lower()
    if key not in OUT_TYPES:
        raise UsageError(f"--type {out_type!r} is not one of {', '.join(OUT_TYPES)}")
    ftype = OUT_TYPES[key]
    return guess_ftype(ckpt, names) if ftype is None else ftype


def _producer(
    ckpt: Checkpoint, spec: ArchSpec, hf_name: str, ctx: TransformContext
) -> Callable[[], np.ndarray]:
    def produce() -> np.ndarray:
        data = ckpt.read(hf_name)
        # The converter works in float32 for everything that is not F16/F32 (BF16 -> F32 is exact).
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        for transform in spec.transforms_for(hf_name):
            data = transform.apply(data, ctx)
        return data

    return produce


def plan_tensors(
    ckpt: Checkpoint,
    spec: ArchSpec,
    cfg: dict[str, Any],
    ftype: LlamaFileType,
    type_for: Callable[[TensorChoice], GGMLQuantizationType] = choose_tensor_type,
) -> list[PlannedTensor]:
    shapes = {n: ckpt.tensor_info(n).shape for n in ckpt.tensor_names() if not spec.is_skipped(n)}
    check_layer_count(spec, cfg, len(shapes))
    names = spec.name_map(cfg)
    check_tensors(spec, cfg, shapes, names, str(ckpt.directory))
    planned: list[PlannedTensor] = []
    for gguf_name, array in spec.extra_tensors(cfg) if spec.extra_tensors is not None else []:
        qtype = type_for(TensorChoice(gguf_name, tuple(array.shape), ftype))
        planned.append(
            PlannedTensor(gguf_name, tuple(array.shape), qtype, lambda array=array: array, "", "F32")
        )
    for hf_name in ckpt.tensor_names():
        if spec.is_skipped(hf_name):
            continue
        gguf_name = names.get(hf_name)
        if gguf_name is None:
            raise Unsupported(
                f"{ckpt.directory}: tensor {hf_name!r} has no GGUF name in the {spec.gguf_arch} table"
            )
        info = ckpt.tensor_info(hf_name)
        if info.dtype not in FLOAT_DTYPES:
            raise Unsupported(
                f"{info.file}: tensor {hf_name!r} is {info.dtype}; only F32, F16 and BF16 are converted"
            )
        ctx = TransformContext(config=cfg, hf_name=hf_name, directory=ckpt.directory)
        shape = info.shape
        for transform in spec.transforms_for(hf_name):
            if transform.out_shape is not None:
                shape = transform.out_shape(shape, ctx)
        qtype = type_for(TensorChoice(gguf_name, shape, ftype))
        planned.append(
            PlannedTensor(
                gguf_name,
                shape,
                qtype,
                _producer(ckpt, spec, hf_name, ctx),
                hf_name,
                info.dtype,
                release=lambda hf_name=hf_name: ckpt.release(hf_name),
            )
        )
    if not planned:
        raise InputInvalid(f"{ckpt.directory}: no tensors to convert")
    return planned


def _general_metadata(out: GGUFOutput, directory: Path) -> None:
    """general.* keys exactly as convert_hf_to_gguf.py derives them (gguf.Metadata from config/README)."""
    total, shared, expert, expert_count = out.parameter_count()
    meta = gguf.Metadata.load(None, directory, None, total)
    if meta.sampling_penalty_repeat is None:
        # llama.cpp's vendored gguf-py also reads HF's name for it.
        gen = directory / "generation_config.json"
        if gen.is_file():
            try:
                meta.sampling_penalty_repeat = json.loads(gen.read_text(encoding="utf-8")).get(
                    "repetition_penalty"
                )
            except (OSError, ValueError):
                pass
    if meta.name is None:
        meta.name = directory.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, expert_count)
    out.writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(out.writer)


def _vocab_entries(directory: Path, config: dict[str, Any]) -> list[Any]:
    from quantcli.vocab import read_vocab

    return list(read_vocab(directory, config).entries)


def source_ftype(ckpt: Checkpoint, names: list[str]) -> LlamaFileType:
    """The converter --outtype that stores the checkpoint's weights without rounding: bf16 when every
    weight matrix is BF16, f16 when every one is F16, else f32 (F32 or mixed checkpoints)."""
    dtypes = {ckpt.tensor_info(n).dtype for n in names if len(ckpt.tensor_info(n).shape) >= 2}
    if dtypes == {"BF16"}:
        return LlamaFileType.MOSTLY_BF16
    if dtypes == {"F16"}:
        return LlamaFileType.MOSTLY_F16
    return LlamaFileType.ALL_F32


@dataclass
class ConverterView:
    """What convert_hf_to_gguf.py would write for a checkpoint, before any weight is read: every tensor
    (name, shape, type, producer) and the complete GGUF metadata. Holds the open checkpoint."""

    ckpt: Checkpoint
    spec: ArchSpec
    cfg: dict[str, Any]
    ftype: LlamaFileType
    planned: list[PlannedTensor]
    output: GGUFOutput

    @property
    def label(self) -> str:
        return FTYPE_LABEL[self.ftype]


def _check_encodable(out: GGUFOutput, config_path: Path) -> None:
    """Every value taken from config.json must fit its GGUF type now, not fail as struct.error while the
    file is written (rope_theta "x" for a FLOAT32, max_position_embeddings -1 for a UINT32)."""
    writer = out.writer
    for key, item in writer.kv_data[0].items():
        try:
            writer._pack_val(item.value, item.type, add_vtype=True, sub_type=item.sub_type)
        except (struct.error, TypeError, ValueError, OverflowError):
            raise InputInvalid(
                f"{config_path}: {item.value!r} is not a valid {item.type.name.lower()} for GGUF key {key}"
            ) from None


def converter_view(
    source: Path | str,
    out_type: str = "auto",
    type_for: Callable[[TensorChoice], GGMLQuantizationType] | None = None,
    before_plan: Callable[[Checkpoint, LlamaFileType], None] | None = None,
) -> ConverterView:
    """Open `source` and plan the converter's output for `out_type` ("source" = the lossless type of
    `source_ftype`). `before_plan(ckpt, ftype)` runs once the type is known, before the tensors and the
    tokenizer are read (the CLI checks the output path there). The caller closes `view.ckpt`."""
    ckpt = open_checkpoint(source)
    try:
        spec = get_arch(ckpt.config, where=str(ckpt.directory / "config.json"))
        cfg = effective_config(spec, ckpt.config)
        names = [n for n in ckpt.tensor_names() if not spec.is_skipped(n)]
        ftype = source_ftype(ckpt, names) if out_type == "source" else resolve_ftype(out_type, ckpt, names)
        if before_plan is not None:
            before_plan(ckpt, ftype)
        cfg["__ftype__"] = ftype
        planned = plan_tensors(ckpt, spec, cfg, ftype, type_for or choose_tensor_type)
        vocab = _vocab_entries(ckpt.directory, ckpt.config)

        out = GGUFOutput(spec.gguf_arch)
        for method, value in hparam_values(spec, cfg, early=True):
            out.call(method, value)
        for tensor in planned:
            out.add_tensor(tensor)
        _general_metadata(out, ckpt.directory)
        for method, value in hparam_values(spec, cfg):
            out.call(method, value)
        out.writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _check_encodable(out, ckpt.directory / "config.json")
        for entry in vocab:
            out.add_kv(entry.key, entry.value, entry.vtype, entry.sub_type)
    except BaseException:
        ckpt.close()
        raise
    return ConverterView(ckpt, spec, cfg, ftype, planned, out)


def convert_model(
    source: Path | str,
    output: Path | str | None = None,
    *,
    out_type: str | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
    on_tensor: Callable[..., None] | None = None,
    resume: bool = False,
    tensor_cache: Any = None,
    output_stem: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert `source` (HF dir, .safetensors file) to GGUF or packed safetensors; returns the --json summary.

    `out_type` "auto"/"f32"/"f16"/"bf16"/"q8_0" is convert_hf_to_gguf.py (`convert_exact`); any other
    llama-quantize recipe name, or `bits=N`, is the one-pass llama-quantize-exact path; `format="ct"|"mlx"|
    "gptq"` writes packed safetensors. `on_tensor(tensor, index, total)` runs after each tensor is written
    (`tensor.name` for every path). More options (bits, format, imatrix, strict, dry_run, verify, ...):
    quantcli.pipeline.convert.
    """
    from quantcli.pipeline import convert

    return convert(
        source, output, out_type=out_type, force=force, threads=threads, progress=progress, on_tensor=on_tensor,
        resume=resume, tensor_cache=tensor_cache, output_stem=output_stem, **options,
    )  # fmt: skip


def convert_exact(
    source: Path | str,
    output: Path | str | None = None,
    *,
    out_type: str = "auto",
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
    type_for: Callable[[TensorChoice], GGMLQuantizationType] | None = None,
    on_tensor: Callable[[PlannedTensor, int, int], None] | None = None,
    resume: bool = False,
    tensor_cache: Any = None,
    output_stem: str | None = None,
    strict: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Convert `source` (HF dir or .safetensors file) to GGUF at `output` exactly as convert_hf_to_gguf.py.

    `type_for` replaces the converter's per-tensor type rule; `on_tensor(tensor, index, total)` is called
    after each tensor is written. `resume` keeps quantized tensors in `<output>.quantcli-cache/`
    (quantcli.jobstate.TensorCache) so a rerun after a crash redoes only the missing ones; batch passes
    its own `tensor_cache`. `output_stem` names the default output (`<stem>-<TYPE>.gguf`) when `output` is
    None (e.g. the repo name of a Hub source). `strict` refuses a Q8_0 plan with F16 fallbacks (exit 8);
    `dry_run` returns the plan (`converter_plan`) and writes nothing.
    """
    started = time.perf_counter()
    paths: list[Path] = []

    def check_path(ckpt: Checkpoint, ftype: LlamaFileType) -> None:
        out_path = Path(output) if output is not None else default_output_name(Path(source), ftype, output_stem)
        if not dry_run:
            from quantcli.pipeline import input_files

            check_output(out_path, force, inputs=input_files(ckpt.directory))
        paths.append(out_path)

    view = converter_view(source, out_type, type_for, check_path)
    out_path = paths[0]
    ckpt, spec, ftype, planned, out = view.ckpt, view.spec, view.ftype, view.planned, view.output
    try:
        if strict or dry_run:
            plan = converter_plan(view)
            if strict:
                plan.refuse_fallbacks()
            if dry_run:
                return plan_summary(plan, source, out_path, plan.file_size(sum(len(r) for _, r in out.encoded_kv())))
        if tensor_cache is None and resume:
            from quantcli.jobstate import TensorCache

            tensor_cache = TensorCache.for_output(out_path, resume=True)

        total = len(planned)
        done = [0]
        bar = _progress_bar(total, sum(t.nbytes for t in planned)) if progress else None

        def tensor_done(tensor: PlannedTensor) -> None:
            done[0] += 1
            if bar is not None:
                bar.advance(tensor)
            if on_tensor is not None:
                on_tensor(tensor, done[0], total)

        try:
            sha256 = out.write(
                out_path, force=force, threads=threads, on_tensor=tensor_done, tensor_cache=tensor_cache
            )
            if resume:
                tensor_cache.discard()
        finally:
            if bar is not None:
                bar.close()
    finally:
        ckpt.close()

    counts = Counter(t.qtype.name for t in planned)
    return {
        "ok": True,
        "source": str(Path(source)),
        "output": str(out_path),
        "format": "gguf",
        "architecture": spec.gguf_arch,
        "file_type": FTYPE_LABEL[ftype],
        "pipeline": f"convert_hf_to_gguf.py --outtype {FTYPE_LABEL[ftype].lower()}",
        "bytes": out_path.stat().st_size,
        "sha256": sha256,
        "tensors": len(planned),
        "tensor_types": dict(sorted(counts.items())),
        "fallbacks": sum(_fell_back(t, ftype) for t in planned),
        "fallback_tensors": [
            {"name": t.name, "wanted": "Q8_0", "written": t.qtype.name,
             "why": f"row {t.shape[-1]} not a multiple of 32: Q8_0 -> {t.qtype.name}"}
            for t in planned
            if _fell_back(t, ftype)
        ],  # fmt: skip
        "parameters": int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in planned)),
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "tensor_cache": tensor_cache.stats() if tensor_cache is not None else None,
    }


_DTYPE_TYPES = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16, "BF16": GGMLQuantizationType.BF16}


def _fell_back(t: PlannedTensor, ftype: LlamaFileType) -> bool:
    """The converter's only fallback: a Q8_0 matrix whose rows are not a multiple of 32 is written F16."""
    return ftype == LlamaFileType.MOSTLY_Q8_0 and t.qtype == GGMLQuantizationType.F16


def converter_plan(view: ConverterView) -> Any:
    """The converter's per-tensor decisions as a quantcli.plan.Plan (for --dry-run and --strict)."""
    from quantcli.plan import FTYPES, ModelInfo, Plan, TensorDecision
    from quantcli.plan.core import Overrides

    label = FTYPE_LABEL[view.ftype]
    decisions = []
    for t in view.planned:
        ne = tuple(int(n) for n in reversed(t.shape))
        src = _DTYPE_TYPES.get(t.source_dtype, GGMLQuantizationType.F32)
        fell_back = _fell_back(t, view.ftype)
        if fell_back:
            reason = f"converter --outtype {label.lower()}: row {ne[0]} not a multiple of 32"
        elif t.qtype == FTYPE_TENSOR_TYPE[view.ftype]:
            reason = f"converter --outtype {label.lower()}"
        else:
            reason = "converter: kept F32 (1-D, norm, bias or always-F32 tensor)"
        decisions.append(
            TensorDecision(
                t.name, ne, src, t.qtype, reason, fell_back, GGMLQuantizationType.Q8_0 if fell_back else None
            )
        )
    model = ModelInfo.from_metadata(view.output.kv_values())
    return Plan(recipe=FTYPES[label], model=model, decisions=decisions, overrides=Overrides())


def plan_summary(plan: Any, source: Path | str, output: Path | str, file_size: int, **extra: Any) -> dict[str, Any]:
    """The --dry-run result: the plan (every tensor with type, reason, fallback) and the exact file size."""
    doc = {
        "ok": True,
        "dry_run": True,
        "source": str(source),
        "output": str(output),
        **extra,
        **plan.to_json(),
        "file_size": file_size,
        "file_size_exact": True,
        "src_bytes": plan.src_tensor_bytes,
    }
    return doc


class _progress_bar:
    """A rich progress bar on stderr, advanced by bytes written, naming the current tensor."""

    def __init__(self, total_tensors: int, total_bytes: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        from quantcli.console import err

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[count]}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.total = total_tensors
        self.done = 0
        self.progress.start()
        self.task = self.progress.add_task("converting", total=total_bytes, count=f"0/{total_tensors}")

    def advance(self, tensor: PlannedTensor) -> None:
        self.done += 1
        self.progress.update(
            self.task, advance=tensor.nbytes, description=tensor.name, count=f"{self.done}/{self.total}"
        )

    def close(self) -> None:
        self.progress.stop()
