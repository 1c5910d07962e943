"""`convert` end to end: pick the path for the requested output, check everything, write, optionally verify.

Three paths, all streaming one tensor at a time (docs/recipes.md, "convert: --type and --bits"):

* converter types (`--type auto|f32|f16|bf16|q8_0`): convert_hf_to_gguf.py, byte for byte
  (`quantcli.convert.convert_exact`);
* llama-quantize recipes (`--type Q4_K_M` ..., `--bits N`): one pass HF -> quantized GGUF, byte for byte
  `convert_hf_to_gguf.py --outtype <source precision>` + `llama-quantize` (`quantcli.requantize`);
* packed safetensors (`--format ct|mlx|gptq --bits N`): `quantcli.writers.packed.write_packed`.

Every combination that cannot run is refused (one line, its exit code) before any weight is read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from quantcli.errors import Unsupported, UsageError, VerifyFailed

CONVERTER_TYPES = ("auto", "f32", "f16", "bf16", "q8_0")
PACKED_FORMATS = ("ct", "mlx", "gptq")
DEFAULT_GROUP_SIZE = {"ct": 128, "mlx": 64, "gptq": 128}
DEFAULT_MAX_SHARD = 5 * 1000**3  # "5GB", as transformers' save_pretrained

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}  # fmt: skip


def parse_size(text: str | int) -> int:
    """`--max-shard-size`: bytes, or a number with KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB (1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(str(text))
        if m is None:
            raise UsageError(f"--max-shard-size {text!r}: expected bytes or a size such as 5GB or 500MiB")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])
    if value <= 0:
        raise UsageError(f"--max-shard-size {text!r} must be positive")
    return value


@dataclass(frozen=True)
class QuantizeOptions:
    """llama-quantize's options, as `quantcli quantize` takes them (only for recipe outputs)."""

    imatrix: str | None = None
    include_weights: Sequence[str] = ()
    exclude_weights: Sequence[str] = ()
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: Sequence[str] = ()
    tensor_type_file: Path | str | None = None
    leave_output_tensor: bool = False
    override_kv: Sequence[str] = ()

    def given(self) -> list[str]:
        """The command-line names of the options that are set."""
        names = []
        for attr, flag in (
            ("imatrix", "--imatrix"), ("include_weights", "--include-weights"),
            ("exclude_weights", "--exclude-weights"), ("pure", "--pure"),
            ("output_tensor_type", "--output-tensor-type"), ("token_embedding_type", "--token-embedding-type"),
            ("tensor_types", "--tensor-type"), ("tensor_type_file", "--tensor-type-file"),
            ("leave_output_tensor", "--leave-output-tensor"), ("override_kv", "--override-kv"),
        ):  # fmt: skip
            if getattr(self, attr):
                names.append(flag)
        return names


@dataclass(frozen=True)
class Target:
    kind: str  # "converter" | "recipe" | "packed"
    out_type: str = "auto"  # converter type
    recipe: Any = None  # quantcli.plan.Ftype
    fmt: Any = None  # packed format class
    bits: int | None = None
    group_size: int | None = None


def resolve_target(
    out_type: str | None, bits: int | None, fmt: str | None, group_size: int | None, max_shard_size: Any
) -> Target:
    """--type / --bits / --format / --group-size -> what to write. Raises before anything is opened."""
    from quantcli.plan.ftypes import ftype_from_bits, parse_ftype

    fmt = (fmt or "gguf").lower()
    if fmt != "gguf":
        from quantcli.quants.packed import Scheme, get_format

        packed = get_format(fmt)  # Unsupported for an unknown format
        if out_type not in (None, "auto"):
            raise UsageError(f"--type applies to GGUF output; --format {fmt} takes --bits")
        if bits is None:
            raise UsageError(f"--format {fmt} needs --bits ({', '.join(map(str, packed.bits_allowed))})")
        group = group_size if group_size is not None else DEFAULT_GROUP_SIZE[fmt]
        packed.check(Scheme(int(bits), group))  # 3-bit ct, group 96, ... -> Unsupported
        return Target("packed", fmt=packed, bits=int(bits), group_size=group)
    if group_size is not None:
        raise UsageError("--group-size applies to packed formats (--format ct|mlx|gptq)")
    if max_shard_size is not None:
        raise UsageError("--max-shard-size applies to packed formats (--format ct|mlx|gptq)")
    if bits is not None:
        if out_type not in (None, "auto"):
            raise UsageError("give --type or --bits, not both")
        return Target("recipe", recipe=ftype_from_bits(int(bits)), bits=int(bits))
    key = (out_type or "auto").strip().lower()
    if key in CONVERTER_TYPES:
        return Target("converter", out_type=key)
    return Target("recipe", recipe=parse_ftype(out_type or ""))  # Unsupported for an unknown name


def default_output(source: Path, target: Target, stem: str | None) -> Path:
    """`<model>-<TYPE>.gguf` (recipe) or `<model>-<FORMAT>-<bits>bit` (packed directory), in the cwd."""
    source = Path(source).resolve()
    stem = stem or (source.name if source.is_dir() else source.parent.name) or "model"
    if target.kind == "packed":
        return Path.cwd() / f"{stem}-{target.fmt.name.upper()}-{target.bits}bit"
    return Path.cwd() / f"{stem}-{target.recipe.name}.gguf"


def convert(
    source: Path | str,
    output: Path | str | None = None,
    *,
    out_type: str | None = None,
    bits: int | None = None,
    format: str | None = "gguf",  # noqa: A002 - the CLI's --format
    group_size: int | None = None,
    max_shard_size: str | int | None = None,
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
    type_for: Any = None,
    on_tensor: Callable[..., None] | None = None,
    resume: bool = False,
    tensor_cache: Any = None,
    output_stem: str | None = None,
    strict: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    max_kld: float | None = None,
    eval_text: Path | str | None = None,
    verify_chunks: int | None = None,
    imatrix: str | None = None,
    include_weights: Sequence[str] = (),
    exclude_weights: Sequence[str] = (),
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_types: Sequence[str] = (),
    tensor_type_file: Path | str | None = None,
    leave_output_tensor: bool = False,
    override_kv: Sequence[str] = (),
) -> dict[str, Any]:
    """The `quantcli convert` unit of work (also batch's). Returns the --json summary; with `verify`, its
    "verify" entry holds the gate's figures and a failed gate raises VerifyFailed (`.result` = summary)."""
    target = resolve_target(out_type, bits, format, group_size, max_shard_size)
    qopts = QuantizeOptions(
        imatrix, tuple(include_weights), tuple(exclude_weights), pure, output_tensor_type,
        token_embedding_type, tuple(tensor_types), tensor_type_file, leave_output_tensor, tuple(override_kv),
    )  # fmt: skip
    given = qopts.given()
    if given and target.kind == "converter":
        raise UsageError(
            f"{', '.join(given)}: llama-quantize options need a llama-quantize recipe (--bits N or --type "
            f"Q4_K_M, ...); --type {target.out_type} is convert_hf_to_gguf.py's own output"
        )
    if given and target.kind == "packed":
        raise Unsupported(f"{', '.join(given)}: not available with --format {target.fmt.name} (GGUF only)")
    if type_for is not None and target.kind != "converter":
        raise UsageError("type_for applies to the converter types only")
    if not verify and (max_kld is not None or eval_text is not None or verify_chunks is not None):
        raise UsageError("--max-kld, --eval-text and --verify-chunks need --verify")
    if verify and dry_run:
        raise UsageError("--verify and --dry-run cannot be combined (a dry run writes nothing to verify)")
    if verify and eval_text is not None and not Path(eval_text).is_file():
        from quantcli.errors import InputMissing

        raise InputMissing(f"--eval-text {eval_text} does not exist")

    if target.kind == "converter":
        from quantcli.convert import convert_exact

        result = convert_exact(
            source, output, out_type=target.out_type, force=force, threads=threads, progress=progress,
            type_for=type_for, on_tensor=on_tensor, resume=resume, tensor_cache=tensor_cache,
            output_stem=output_stem, strict=strict, dry_run=dry_run,
        )  # fmt: skip
    elif target.kind == "recipe":
        result = _convert_recipe(
            source, output, target, qopts, force=force, threads=threads, progress=progress,
            on_tensor=on_tensor, resume=resume, tensor_cache=tensor_cache, output_stem=output_stem,
            strict=strict, dry_run=dry_run,
        )  # fmt: skip
    else:
        result = _convert_packed(
            source, output, target, max_shard_size, force=force, progress=progress, on_tensor=on_tensor,
            output_stem=output_stem, strict=strict, dry_run=dry_run,
        )  # fmt: skip
    if verify:
        _verify(source, result, max_kld, eval_text, verify_chunks, progress)
    return result


def _verify(
    source: Path | str,
    result: dict[str, Any],
    max_kld: float | None,
    eval_text: Path | str | None,
    chunks: int | None,
    progress: bool,
) -> None:
    from quantcli.runtime.verify import DEFAULT_MAX_KLD, verify

    report = verify(
        source,
        result["output"],
        text=eval_text,
        max_kld=DEFAULT_MAX_KLD if max_kld is None else max_kld,
        chunks=4 if chunks is None else chunks,
    )
    report["seconds"] = round(report["seconds"], 3)
    result["verify"] = report
    if not report["passed"]:
        result["ok"] = False
        exc = VerifyFailed(
            f"verification failed: mean KLD {report['kld_mean']:.4f} > {report['max_kld']} "
            f"(PPL {report['ppl_source']:.3f} -> {report['ppl_output']:.3f}, top-1 "
            f"{100 * report['top1_agreement']:.1f}%); the output is kept at {result['output']}"
        )
        exc.result = result  # type: ignore[attr-defined]
        raise exc


def _convert_recipe(
    source: Path | str,
    output: Path | str | None,
    target: Target,
    qopts: QuantizeOptions,
    *,
    force: bool,
    threads: int | None,
    progress: bool,
    on_tensor: Callable[..., None] | None,
    resume: bool,
    tensor_cache: Any,
    output_stem: str | None,
    strict: bool,
    dry_run: bool,
) -> dict[str, Any]:
    import dataclasses

    from quantcli.atomic import check_output
    from quantcli.console import peak_rss_bytes
    from quantcli.convert import _progress_bar, plan_summary
    from quantcli.plan.options import build_overrides
    from quantcli.requantize import (
        CheckpointTensors,
        check_plan_executable,
        load_imatrix_use,
        plan_checkpoint,
        write_gguf,
    )

    started = time.perf_counter()
    ftype = target.recipe
    im = load_imatrix_use(qopts.imatrix, qopts.include_weights, qopts.exclude_weights)
    if im is not None and not im.imatrix.entries:
        im = None  # llama-quantize: an imatrix with no (remaining) entries is not used at all
    overrides = build_overrides(
        pure=qopts.pure,
        output_tensor_type=qopts.output_tensor_type,
        token_embedding_type=qopts.token_embedding_type,
        tensor_types=qopts.tensor_types,
        tensor_type_file=Path(qopts.tensor_type_file) if qopts.tensor_type_file else None,
        leave_output_tensor=qopts.leave_output_tensor,
        override_kv=qopts.override_kv,
    )
    overrides = dataclasses.replace(overrides, has_imatrix=im is not None)
    out_path = Path(output) if output is not None else default_output(Path(source), target, output_stem)
    if not dry_run:
        check_output(out_path, force, inputs=input_files(source, qopts))
    with plan_checkpoint(source, ftype, overrides, im) as cp:
        plan = cp.plan
        pipeline = f"convert_hf_to_gguf.py --outtype {cp.source_type} + llama-quantize {ftype.name}"
        # Every check the real run makes (quantizer exists, imatrix required/fits, --strict) also gates
        # a dry run: it shows a plan that would run.
        missing = check_plan_executable(plan, im, allow_requantize=False, strict=strict)
        if dry_run:
            return plan_summary(
                plan, source, out_path, cp.file_size, pipeline=pipeline, format="gguf", imatrix_missing=missing
            )
        if tensor_cache is None and resume:
            from quantcli.jobstate import TensorCache

            tensor_cache = TensorCache.for_output(out_path, resume=True)
        bar = _progress_bar(len(plan.decisions), plan.tensor_bytes) if progress else None

        def tensor_done(d: Any, index: int, total: int) -> None:
            if bar is not None:
                bar.advance(d)
            if on_tensor is not None:
                on_tensor(d, index, total)

        try:
            size, sha256 = write_gguf(
                out_path, cp.kv, plan, CheckpointTensors(cp.planned), imatrix=im, threads=threads,
                force=force, on_tensor=tensor_done, tensor_cache=tensor_cache,
            )  # fmt: skip
            if resume:
                tensor_cache.discard()
        finally:
            if bar is not None:
                bar.close()
        arch = cp.arch
    return {
        "ok": True,
        "source": str(Path(source)),
        "output": str(out_path),
        "format": "gguf",
        "architecture": arch,
        "file_type": ftype.name,
        "recipe": ftype.name,
        "pipeline": pipeline,
        "bytes": size,
        "sha256": sha256,
        "tensors": len(plan.decisions),
        "tensor_types": plan.type_histogram(),
        "quantized": sum(d.changes for d in plan.decisions),
        "fallbacks": plan.n_fallback,
        "fallback_tensors": [
            {"name": d.name, "wanted": d.fallback_from.name if d.fallback_from else None, "written": d.type.name,
             "why": d.fallback_why}
            for d in plan.fallbacks
        ],  # fmt: skip
        "bits_per_weight": round(plan.bits_per_weight, 4),
        "parameters": plan.n_elements,
        "imatrix": None if im is None else str(im.imatrix.path),
        "imatrix_missing": missing,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss_bytes": peak_rss_bytes(),
        "tensor_cache": tensor_cache.stats() if tensor_cache is not None else None,
    }


def _convert_packed(
    source: Path | str,
    output: Path | str | None,
    target: Target,
    max_shard_size: str | int | None,
    *,
    force: bool,
    progress: bool,
    on_tensor: Callable[..., None] | None,
    output_stem: str | None,
    strict: bool,
    dry_run: bool,
) -> dict[str, Any]:
    from quantcli.atomic import check_output_dir
    from quantcli.loaders import open_checkpoint
    from quantcli.quants.packed import MODEL_DTYPES, Scheme
    from quantcli.writers.packed import is_linear_weight, packed_names, write_packed

    shard = parse_size(max_shard_size) if max_shard_size is not None else DEFAULT_MAX_SHARD
    out_path = Path(output) if output is not None else default_output(Path(source), target, output_stem)
    if not dry_run:
        check_output_dir(out_path, force, inputs=input_files(source))
    with open_checkpoint(source) as ckpt:
        # scales (and the tensors kept as they are) live in the model's dtype
        dtype = str(ckpt.config.get("torch_dtype") or "bfloat16")
        scheme = Scheme(target.bits, target.group_size, dtype if dtype in MODEL_DTYPES else "bfloat16")
        names = ckpt.tensor_names()
        for n in names:  # the per-row check write_packed also makes, before any compute
            shape = ckpt.tensor_info(n).shape
            if is_linear_weight(n, shape):
                target.fmt.check(scheme, shape[1])
        # Packed formats have no fallback types: a row the group size does not divide is refused above,
        # so --strict has nothing more to refuse.
        if dry_run:
            tensors = []
            for n in names:
                info = ckpt.tensor_info(n)
                if is_linear_weight(n, info.shape):
                    parts = packed_names(target.fmt, n.removesuffix(".weight"), info.shape, scheme)
                    tensors.append({"name": n, "shape": list(info.shape), "src_type": info.dtype,
                                    "type": f"{target.fmt.name}-w{scheme.bits}g{scheme.group_size}",
                                    "reason": "Linear weight of a decoder block", "fell_back": False,
                                    "bytes": sum(t.nbytes for t in parts),
                                    "packed": [t.name for t in parts]})
                else:
                    tensors.append({"name": n, "shape": list(info.shape), "src_type": info.dtype,
                                    "type": scheme.dtype, "reason": "kept (not a decoder Linear weight)",
                                    "fell_back": False, "bytes": _kept_bytes(info, scheme)})
            return {"ok": True, "dry_run": True, "source": str(source), "output": str(out_path),
                    "format": target.fmt.name, "bits": scheme.bits, "group_size": scheme.group_size,
                    "dtype": scheme.dtype, "n_tensors": len(tensors), "n_fallback": 0,
                    "tensor_bytes": sum(t["bytes"] for t in tensors), "tensors": tensors}
        total = len(names)
        done = [0]
        bar = _CountBar(total) if progress else None

        def tensor_done(name: str) -> None:
            done[0] += 1
            if bar is not None:
                bar.advance(name)
            if on_tensor is not None:
                on_tensor(SimpleNamespace(name=name), done[0], total)

        try:
            result = write_packed(
                ckpt, out_path, target.fmt, scheme, force=force, max_shard_size=shard, on_tensor=tensor_done
            )
        finally:
            if bar is not None:
                bar.close()
    result["source"] = str(Path(source))
    result["dtype"] = scheme.dtype
    result["tensor_cache"] = None  # packed outputs are rewritten whole (atomic directory); no tensor cache
    return result


def input_files(source: Path | str, qopts: Any = None) -> list[Path]:
    """Every file a conversion reads: model files, plus the imatrix and tensor-type file when given."""
    from quantcli.jobstate import model_input_files

    files = model_input_files(Path(source))
    for extra in (getattr(qopts, "imatrix", None), getattr(qopts, "tensor_type_file", None)):
        if extra:
            files.append(Path(extra))
    return files


def _kept_bytes(info: Any, scheme: Any) -> int:
    import math

    import numpy as np

    from quantcli.quants.packed import MODEL_DTYPES

    floating = info.dtype in ("F32", "F16", "BF16", "F64")
    itemsize = np.dtype(MODEL_DTYPES[scheme.dtype]).itemsize if floating else None
    if itemsize is None:
        itemsize = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}.get(info.dtype, 4)
    return math.prod(info.shape) * itemsize


class _CountBar:
    """A rich progress bar on stderr counting tensors (packed outputs)."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from quantcli.console import err

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err, transient=True,
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("packing", total=total)

    def advance(self, name: str) -> None:
        self.progress.update(self.task, advance=1, description=name)

    def close(self) -> None:
        self.progress.stop()
