"""A job: one source, one plan, one sink — the unit of work of `convert`, `quantize`, `plan` and every batch entry.

`Job` is a frozen, picklable description (what the CLI parses and what batch builds from a manifest entry:
the same object, so the same request gives the same bytes everywhere); `run(job)` executes it:

1. refuse impossible option combinations (one line, its exit code) before anything is opened;
2. open the source and plan every output tensor — for GGUF: the KV section, each tensor's type and reason
   (plan/), the exact file size — and check the output path; `dry_run` stops here with the plan;
3. stream: for each tensor, its bytes from the source stage (engine/stream.py) into the sink (the GGUF writer,
   or the packed-safetensors directory writer), with the resume cache, progress and an atomic output;
4. `verify`: run source and output through the runtime and gate on the mean KL-divergence.

A per-layer stage (calibration) plugs in between 2 and 3: it sees the plan and the source tensors of one
layer at a time and hands the quantizer its statistics (the imatrix weights slot of `requantized_chunks`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantcli.atomic import check_output, check_output_dir
from quantcli.console import peak_rss_bytes
from quantcli.engine.calibrate import (
    CalibrationOptions,
    SpillStore,
    calibrate_gguf,
    calibration_options,
    check_packed_format,
    spill_store,
)
from quantcli.engine.progress import ByteProgress, CountProgress
from quantcli.engine.result import gguf_result, packed_plan_result, packed_result, plan_result
from quantcli.engine.stream import ConverterTensors, TensorBytes, requantized_chunks, stage_times
from quantcli.engine.target import (
    Target,
    default_output_name,
    model_stem,
    resolve_output,
    resolve_size_target,
    resolve_target,
)
from quantcli.errors import InputInvalid, InputMissing, Unsupported, UsageError, VerifyFailed
from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.jobstate import TensorCache, model_input_files
from quantcli.loaders.gguf import GGUFFile, is_gguf_file
from quantcli.plan.checks import check_plan_executable
from quantcli.plan.converter import FTYPE_LABEL, converter_plan
from quantcli.plan.core import Overrides, Plan, TensorSpec, make_plan
from quantcli.plan.ftypes import Ftype, resolve_recipe
from quantcli.plan.metadata import ImatrixUse, load_imatrix_use, output_kv
from quantcli.plan.options import build_overrides
from quantcli.plan.rules import ModelInfo, n_dims
from quantcli.plan.target import (
    choose_types,
    explained,
    free_decisions,
    make_budget,
    mixture_ftype,
    targeted_overrides,
)
from quantcli.writers.gguf import OutputTensor, file_size, metadata_bytes, write_gguf

if TYPE_CHECKING:  # sources.hf (architectures, vocabularies) loads only for an HF source
    from quantcli.sources.hf import ConverterView

OnTensor = Callable[[OutputTensor, int, int], None]
# An HF source with this much tensor data or more streams on three threads (reader, quantizer, writer:
# docs/engine.md, "Overlap"); a smaller one on one, as its reads mostly come from the page cache and the
# tensors the threads hold besides the current one would be much of its peak memory (a small MoE's
# stacks: tests/test_moe.py).
OVERLAP_MIN_BYTES = 1 << 30
_SAFETENSORS_TYPES = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16,
                      "BF16": GGMLQuantizationType.BF16}  # fmt: skip


@dataclass(frozen=True)
class RecipeOptions:
    """llama-quantize's options (only for recipe targets), as `quantize` takes them."""

    imatrix: str | None = None
    include_weights: tuple[str, ...] = ()
    exclude_weights: tuple[str, ...] = ()
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: tuple[str, ...] = ()
    tensor_type_file: str | None = None
    leave_output_tensor: bool = False
    override_kv: tuple[str, ...] = ()

    def given(self) -> list[str]:
        """The command-line names of the options that are set."""
        flags = {
            "imatrix": "--imatrix", "include_weights": "--include-weights", "exclude_weights": "--exclude-weights",
            "pure": "--pure", "output_tensor_type": "--output-tensor-type",
            "token_embedding_type": "--token-embedding-type", "tensor_types": "--tensor-type",
            "tensor_type_file": "--tensor-type-file", "leave_output_tensor": "--leave-output-tensor",
            "override_kv": "--override-kv",
        }  # fmt: skip
        return [flag for attr, flag in flags.items() if getattr(self, attr)]

    def overrides(self, has_imatrix: bool) -> Overrides:
        overrides = build_overrides(
            pure=self.pure,
            output_tensor_type=self.output_tensor_type,
            token_embedding_type=self.token_embedding_type,
            tensor_types=self.tensor_types,
            tensor_type_file=Path(self.tensor_type_file) if self.tensor_type_file else None,
            leave_output_tensor=self.leave_output_tensor,
            override_kv=self.override_kv,
        )
        return dataclasses.replace(overrides, has_imatrix=has_imatrix)

    def input_files(self) -> list[Path]:
        return [Path(p) for p in (self.imatrix, self.tensor_type_file) if p]


@dataclass(frozen=True)
class VerifyOptions:
    max_kld: float | None = None
    eval_text: str | None = None
    chunks: int | None = None


@dataclass(frozen=True)
class Job:
    source: str  # a local path (hub ids are resolved before a job is built)
    target: Target
    output: str | None = None  # None: the default name in the current directory
    recipe: RecipeOptions = field(default_factory=RecipeOptions)
    verify: VerifyOptions | None = None
    command: str = "convert"
    strict: bool = False
    dry_run: bool = False
    force: bool = False
    resume: bool = False
    allow_requantize: bool = False
    threads: int | None = None
    output_stem: str | None = None  # names the default output (a Hub source's repo name)
    calibration: CalibrationOptions | None = None  # --method gptq and its data; None: round-to-nearest

    def input_files(self) -> list[Path]:
        """Every file the job reads, which together decide its output bytes (skip-if-done, output checks)."""
        calib = self.calibration.input_files() if self.calibration is not None else []
        return model_input_files(Path(self.source)) + self.recipe.input_files() + calib



def make_job(
    source: Path | str,
    output: Path | str | None = None,
    *,
    out_type: str | None = None,
    bits: int | None = None,
    format: str | None = "gguf",  # noqa: A002 - the CLI's --format
    group_size: int | None = None,
    max_shard_size: str | int | None = None,
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
    verify: bool = False,
    max_kld: float | None = None,
    eval_text: Path | str | None = None,
    verify_chunks: int | None = None,
    target_size: str | int | None = None,
    target_bpw: float | None = None,
    recipe_only: bool = False,
    method: str | None = None,
    calib: Sequence[str] = (),
    calib_samples: int | None = None,
    calib_seq_len: int | None = None,
    act_order: bool | None = None,
    damp: float | None = None,
    **flags: Any,
) -> Job:
    """A Job from the command line's (and a manifest's) option names. Every combination that cannot run is
    refused here, before anything is opened. `recipe_only` (`plan`, `quantize`): `--type` names a
    llama-quantize recipe even where the converter has a type of that name (q8_0, f16, bf16, f32).
    `target_size` / `target_bpw`: every tensor's type chosen under that budget (plan/target.py)."""
    sized = resolve_size_target(target_size, target_bpw, out_type, bits, format)
    if sized is not None:
        if pure:
            raise UsageError("--pure gives every tensor one type: it cannot be combined with a size target")
        target = sized
    elif recipe_only:
        target = Target("recipe", recipe=resolve_recipe(out_type, bits), bits=bits)
    else:
        target = resolve_target(out_type, bits, format, group_size, max_shard_size)
    recipe = RecipeOptions(
        imatrix, tuple(include_weights), tuple(exclude_weights), pure, output_tensor_type, token_embedding_type,
        tuple(tensor_types), str(tensor_type_file) if tensor_type_file else None, leave_output_tensor,
        tuple(override_kv),
    )  # fmt: skip
    given = recipe.given()
    if given and target.kind == "converter":
        raise UsageError(
            f"{', '.join(given)}: llama-quantize options need a llama-quantize recipe (--bits N or --type "
            f"Q4_K_M, ...); --type {target.out_type} is convert_hf_to_gguf.py's own output"
        )
    if given and target.kind == "packed":
        raise Unsupported(f"{', '.join(given)}: not available with --format {target.format} (GGUF only)")
    if not verify and (max_kld is not None or eval_text is not None or verify_chunks is not None):
        raise UsageError("--max-kld, --eval-text and --verify-chunks need --verify")
    if verify and flags.get("dry_run"):
        raise UsageError("--verify and --dry-run cannot be combined (a dry run writes nothing to verify)")
    if verify and eval_text is not None and not Path(eval_text).is_file():
        raise InputMissing(f"--eval-text {eval_text} does not exist")
    verify_opts = VerifyOptions(max_kld, str(eval_text) if eval_text else None, verify_chunks) if verify else None
    calibration = calibration_options(method, tuple(calib), calib_samples, calib_seq_len, act_order, damp)
    if calibration is not None:
        _check_calibration(calibration, target)
    return Job(str(source), target, None if output is None else str(output), recipe, verify_opts, **flags,
               calibration=calibration)  # fmt: skip


def _check_calibration(calibration: CalibrationOptions, target: Target) -> None:
    method = f"--method {calibration.method}"
    if target.kind == "converter":
        raise UsageError(
            f"{method} needs a quantized output (--bits N, a recipe such as --type Q4_K_M, or --format ct/gptq/mlx); "
            f"--type {target.out_type} is convert_hf_to_gguf.py's own output"
        )
    if target.kind == "packed":
        from quantcli.quants.packed import Scheme

        assert target.bits is not None and target.group_size is not None
        check_packed_format(calibration, target.packed_format, Scheme(target.bits, target.group_size))
        return
    if calibration.act_order:
        raise UsageError(f"--act-order: {method} on GGUF grids visits columns in order (packed formats only)")


def convert_model(source: Path | str, output: Path | str | None = None, *, progress: bool = False,
                  on_tensor: OnTensor | None = None, tensor_cache: TensorCache | None = None,
                  **options: Any) -> dict[str, Any]:  # fmt: skip
    """`quantcli convert` as a function: `make_job(source, output, **options)` then `run`."""
    return run(make_job(source, output, **options), progress=progress, on_tensor=on_tensor, tensor_cache=tensor_cache)


def run(
    job: Job, *, progress: bool = False, on_tensor: OnTensor | None = None, tensor_cache: TensorCache | None = None
) -> dict[str, Any]:
    """Execute `job`; returns its result (docs/json.md). A failed --verify gate raises VerifyFailed with the
    result (`ok: false`, the figures) as its `.result`."""
    started = time.perf_counter()
    if job.target.kind == "packed":
        result = _run_packed(job, progress, on_tensor)
    else:
        result = _run_gguf(job, progress, on_tensor, tensor_cache)
    result["seconds"] = round(time.perf_counter() - started, 3)
    if job.verify is not None:
        _verify(job, result)
    return result


# --------------------------------------------------------------------------------------------------------
# GGUF


@dataclass
class GGUFPlan:
    """Everything the GGUF sink needs, decided before any weight is read."""

    kv: list[tuple[str, bytes]]
    plan: Plan
    tensors: list[OutputTensor]
    architecture: str
    file_type: str
    pipeline: str
    chunks: Callable[[OutputTensor], Iterable[Any]] = lambda t: ()
    imatrix: ImatrixUse | None = None
    imatrix_missing: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None
    use_cache: Callable[[TensorCache | None], None] = lambda cache: None  # --resume: where quantized bytes go
    stages: dict[str, float] = field(default_factory=stage_times)  # seconds per stream stage (by `chunks`)
    # The calibration stage (--method gptq): fills the spill store `chunks` reads calibrated tensors from,
    # returns the result's `calibration` facts.
    calibrate: Callable[[SpillStore, bool], dict[str, Any]] | None = None
    # The writer writes on its own thread (an HF source: every chunk is memory of its own); a GGUF source's
    # copied tensors are views of its memory map, released once written, so it writes in the foreground.
    background_writes: bool = False

    @property
    def file_size(self) -> int:
        return file_size(self.kv, self.tensors)


def _run_gguf(job: Job, progress: bool, on_tensor: OnTensor | None, tensor_cache: TensorCache | None) -> dict[str, Any]:
    out_paths: list[Path] = []
    planned = _plan_gguf(job, out_paths, progress)
    out_path = out_paths[0]
    try:
        if job.dry_run:
            return plan_result(job, planned, out_path)
        if planned.calibrate is not None:
            with spill_store(out_path, _resume_key(job)) as store:
                facts = planned.calibrate(store, progress)
                result = _write_gguf(job, planned, out_path, progress, on_tensor, tensor_cache)
            result["calibration"] = facts
            return result
        return _write_gguf(job, planned, out_path, progress, on_tensor, tensor_cache)
    finally:
        planned.close()


def _write_gguf(
    job: Job, planned: GGUFPlan, out_path: Path, progress: bool, on_tensor: OnTensor | None,
    tensor_cache: TensorCache | None,
) -> dict[str, Any]:  # fmt: skip
    if job.resume and tensor_cache is None:
        tensor_cache = TensorCache.for_output(out_path, resume=True)
    planned.use_cache(tensor_cache)
    bar = ByteProgress(len(planned.tensors), sum(t.nbytes for t in planned.tensors)) if progress else None

    def tensor_done(tensor: OutputTensor, index: int, total: int) -> None:
        if bar is not None:
            bar.advance(tensor)
        if on_tensor is not None:
            on_tensor(tensor, index, total)

    try:
        size, sha256 = write_gguf(
            out_path, planned.kv, planned.tensors, planned.chunks, force=job.force, on_tensor=tensor_done,
            times=planned.stages, background=planned.background_writes,
        )
    finally:
        if bar is not None:
            bar.close()
    if job.resume and tensor_cache is not None:
        tensor_cache.discard()
    return gguf_result(job, planned, out_path, size, sha256, peak_rss_bytes(), tensor_cache)


def _planned_output(job: Job) -> Path:
    stem = job.output_stem or model_stem(job.source)
    return resolve_output(job.output, default_output_name(stem, job.target))


def _plan_gguf(job: Job, out_paths: list[Path], progress: bool = False) -> GGUFPlan:
    """Open the source and plan the output; `out_paths` receives the output path once it is known. `progress`:
    a bar while a size target measures its costs."""
    source = Path(job.source)
    if job.target.kind == "converter":
        return _plan_converter(job, out_paths)
    out_path = _planned_output(job)
    out_paths.append(out_path)
    if is_gguf_file(source):
        if not job.dry_run:
            check_output(out_path, job.force)
        return _plan_gguf_source(job, out_path, progress)
    if not source.exists():
        raise InputMissing(f"{source} does not exist")
    if not job.dry_run:
        check_output(out_path, job.force, inputs=job.input_files())
    return _plan_checkpoint_recipe(job, progress)


def _plan_converter(job: Job, out_paths: list[Path]) -> GGUFPlan:
    def check_path(ckpt: Any, ftype: Any) -> None:
        stem = job.output_stem or model_stem(job.source)
        out_path = resolve_output(job.output, default_output_name(stem, job.target, FTYPE_LABEL[ftype]))
        if not job.dry_run:
            check_output(out_path, job.force, inputs=job.input_files())
        out_paths.append(out_path)

    from quantcli.sources.hf import open_converter_view

    view = open_converter_view(job.source, job.target.out_type, before_plan=check_path)
    try:
        model = ModelInfo.from_metadata(view.metadata.values())
        plan = converter_plan([t.converter_tensor() for t in view.tensors], view.ftype, model)
        if job.strict:
            plan.refuse_fallbacks()
        stages = stage_times()
        source = ConverterTensors(view.tensors, job.threads, times=stages)
        overlap = _overlaps(view)
        if overlap:
            source.read_ahead([t.name for t in view.tensors])

        def chunks(t: OutputTensor) -> Iterable[Any]:
            yield from source.tensor_chunks(t.name)
            source.release(t.name)

        planned = GGUFPlan(
            kv=view.metadata.encoded(),
            plan=plan,
            tensors=[OutputTensor(t.name, t.ne, t.type) for t in view.tensors],
            architecture=view.architecture,
            file_type=view.label,
            pipeline=f"convert_hf_to_gguf.py --outtype {view.label.lower()}",
            chunks=chunks,
            close=_closing(source, view),
            use_cache=lambda cache: setattr(source, "tensor_cache", cache),
            stages=stages,
            background_writes=overlap,
        )
        return planned
    except BaseException:
        view.close()
        raise


def _recipe_plan(metadata: dict[str, Any], specs: list[TensorSpec], ftype: Ftype, overrides: Overrides) -> Plan:
    for override in overrides.kv_overrides:  # the loader reads hyper-parameters through the overrides
        metadata[override.key] = override.loader_value
    return make_plan(ModelInfo.from_metadata(metadata), specs, ftype, overrides)


def _output_tensors(plan: Plan) -> list[OutputTensor]:
    # llama-quantize stores ggml_n_dims dimensions (trailing 1s dropped)
    return [OutputTensor(d.name, d.ne[: n_dims(d.ne)], d.type) for d in plan.decisions]


def _plan_and_kv(
    job: Job, metadata: dict[str, Any], specs: list[TensorSpec], src_kv: list[tuple[str, bytes]],
    source: TensorBytes, imatrix: ImatrixUse | None, overrides: Overrides, progress: bool,
) -> tuple[Plan, list[tuple[str, bytes]]]:  # fmt: skip
    """The recipe's plan and output KV section; for a size target, the types chosen per tensor from costs
    measured on `source` (refusing an impossible budget before any weight is read)."""
    ftype = job.target.recipe
    assert ftype is not None
    target = job.target.size_target
    if target is None:
        return _recipe_plan(metadata, specs, ftype, overrides), output_kv(src_kv, ftype, imatrix, overrides.kv_overrides)
    base = _recipe_plan(metadata, specs, ftype, dataclasses.replace(overrides, pure=True))
    kv = output_kv(src_kv, ftype, imatrix, overrides.kv_overrides)  # general.file_type's size does not vary
    budget = make_budget(base, len(metadata_bytes(kv, _output_tensors(base))), target)
    if job.strict:
        base.refuse_fallbacks()  # a fixed tensor's (the target's own choices never need a fallback)
    free = free_decisions(base)
    bar = CountProgress(len(free), "measuring") if progress else None
    from quantcli.engine.costs import costs_key, measure_costs, measure_costs_once

    try:
        costs = measure_costs_once(
            costs_key(job.input_files(), free),
            lambda: measure_costs(source, free, imatrix, job.threads, bar.advance if bar is not None else None),
        )
    finally:
        if bar is not None:
            bar.close()
    choices = choose_types(base, budget, costs)
    chosen = {d.name: d.type for d in base.decisions if d.changes} | {n: c.type for n, c in choices.items()}
    mixture = mixture_ftype(list(chosen.values()))
    plan = explained(_recipe_plan(metadata, specs, mixture, targeted_overrides(overrides, choices)), choices, target)
    kv = output_kv(src_kv, mixture, imatrix, overrides.kv_overrides)
    size = file_size(kv, _output_tensors(plan))
    if target.size is not None and size > target.size or target.bpw is not None and plan.bits_per_weight > target.bpw:
        raise AssertionError(f"size target missed: {size} bytes, {plan.bits_per_weight} bpw for {target}")
    return plan, kv


def _requantizing(
    job: Job, plan: Plan, kv: list[tuple[str, bytes]], src: TensorBytes, imatrix: ImatrixUse | None,
    architecture: str, pipeline: str, close: Callable[[], None], stages: dict[str, float],
    read_ahead: Callable[[list[str], bool], None] | None = None,
) -> GGUFPlan:  # fmt: skip
    """The GGUF sink of a recipe. `read_ahead` (an HF source's `ConverterTensors.read_ahead`): told the order
    the source's tensors will be asked for in, and the writes go to a writer thread."""
    missing = check_plan_executable(plan, imatrix, job.allow_requantize, job.strict)
    by_name = plan.by_name()
    state: dict[str, Any] = {"cache": None, "store": None}
    tensors = _output_tensors(plan)
    if read_ahead is not None:
        read_ahead([t.name for t in tensors], True)

    def weights_for(name: str, d: Any) -> Any:
        return imatrix.imatrix.weights_for(d.name, d.ne) if imatrix is not None and d.changes else None

    def chunks(t: OutputTensor) -> Iterable[Any]:
        d = by_name[t.name]
        made = state["store"].get(t.name) if state["store"] is not None else None
        if made is not None:
            return [made["data"]]
        return requantized_chunks(src, d, weights_for(t.name, d), job.threads, state["cache"], stages)

    calibrate = None
    if job.calibration is not None:
        opts = job.calibration

        def calibrate(store: SpillStore, progress: bool) -> dict[str, Any]:
            state["store"] = store
            bar = CountProgress(0) if progress else None
            try:
                from quantcli.engine.awq import calibrate_gguf_awq  # only a calibrating job loads AWQ

                calibrate_stage = calibrate_gguf_awq if opts.uses_awq else calibrate_gguf
                facts = calibrate_stage(opts, Path(job.source), by_name, weights_for, store, job.threads,
                                        _block_progress(bar))  # fmt: skip
                if read_ahead is not None:  # the calibrated tensors come from the store, not the source
                    read_ahead([t.name for t in tensors if t.name not in store.parts], True)
                return facts
            finally:
                if bar is not None:
                    bar.close()

    assert plan.recipe is not None
    planned = GGUFPlan(
        kv=kv,
        plan=plan,
        tensors=tensors,
        architecture=architecture,
        file_type=plan.recipe.name,
        pipeline=pipeline,
        chunks=chunks,
        imatrix=imatrix,
        imatrix_missing=missing,
        close=close,
        use_cache=lambda cache: state.__setitem__("cache", cache),
        stages=stages,
        calibrate=calibrate,
        background_writes=read_ahead is not None,
    )
    return planned


def _resume_key(job: Job) -> str | None:
    """With --resume, what decides a calibrating job's bytes (inputs by size and mtime, every option but
    where the output goes and how the run is shown), so a spill directory is only reused by the same job."""
    if not job.resume:
        return None
    import hashlib
    import json

    from quantcli import __version__
    from quantcli.jobstate import inputs_fingerprint

    deciding = dataclasses.asdict(job)
    for volatile in ("output", "force", "resume", "threads", "dry_run", "output_stem", "command"):
        deciding.pop(volatile, None)
    record = {"inputs": inputs_fingerprint(job.input_files()), "job": deciding, "version": __version__}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _block_progress(bar: CountProgress | None) -> Callable[[int, int], None]:
    def block_done(done: int, total: int) -> None:
        if bar is not None:
            bar.progress.update(bar.task, total=total, completed=done, description=f"calibrating block {done}/{total}")

    return block_done


def _plan_gguf_source(job: Job, out_path: Path, progress: bool) -> GGUFPlan:
    imatrix = load_imatrix_use(job.recipe.imatrix, job.recipe.include_weights, job.recipe.exclude_weights)
    overrides = job.recipe.overrides(has_imatrix=imatrix is not None)
    if job.calibration is not None:
        raise Unsupported(f"--method {job.calibration.method} needs an HF checkpoint source (the runtime calibrates "
                          "the model it converts); this is a GGUF file")  # fmt: skip
    src = GGUFFile(job.source)
    try:
        if Path(job.source).resolve() == out_path.resolve():
            raise UsageError("input and output files are the same")
        # llama-quantize loads the model's hyper-parameters first: refuse what it could not load.
        if not src.tensors:
            raise InputInvalid(f"{src.path}: the file has no tensors")
        if not isinstance(src.get(f"{src.architecture}.block_count"), int):
            raise InputInvalid(f"{src.path}: {src.architecture}.block_count is missing")
        specs = [TensorSpec(t.name, t.ne, t.type) for t in src.tensors.values()]
        src_kv = [(key, item.raw) for key, item in src.kv.items()]
        metadata = {k: v.value for k, v in src.kv.items()}
        plan, kv = _plan_and_kv(job, metadata, specs, src_kv, src, imatrix, overrides, progress)
        return _requantizing(job, plan, kv, src, imatrix, src.architecture,
                             f"llama-quantize {_recipe_label(job, plan)}", src.close, stage_times())  # fmt: skip
    except BaseException:
        src.close()
        raise


def _recipe_label(job: Job, plan: Plan) -> str:
    """The recipe as the pipeline names it: `Q4_K_M`, or the mixture's file type with the target's types."""
    if job.target.size_target is None:
        return plan.recipe.name
    return f"{plan.recipe.name} --tensor-type per tensor ({job.target.size_target.describe()})"


def _overlaps(view: ConverterView) -> bool:
    return view.ckpt.total_bytes() >= OVERLAP_MIN_BYTES


def _closing(source: ConverterTensors, view: ConverterView) -> Callable[[], None]:
    def close() -> None:
        try:
            source.close()  # its read-ahead thread reads the checkpoint
        finally:
            view.close()

    return close


def _plan_checkpoint_recipe(job: Job, progress: bool) -> GGUFPlan:
    """An HF checkpoint planned as the GGUF convert_hf_to_gguf.py writes at its own precision (lossless), then
    through llama-quantize's rules: byte for byte the two-step pipeline, in one pass."""
    imatrix = load_imatrix_use(job.recipe.imatrix, job.recipe.include_weights, job.recipe.exclude_weights)
    overrides = job.recipe.overrides(has_imatrix=imatrix is not None)
    from quantcli.sources.hf import open_converter_view

    view: ConverterView = open_converter_view(job.source, "lossless")
    try:
        specs = [TensorSpec.from_numpy_shape(t.name, t.shape, t.type) for t in view.tensors]
        stages = stage_times()
        source = ConverterTensors(view.tensors, job.threads, times=stages)
        plan, kv = _plan_and_kv(job, view.metadata.values(), specs, view.metadata.encoded(), source, imatrix,
                                overrides, progress)  # fmt: skip
        pipeline = f"convert_hf_to_gguf.py --outtype {view.label.lower()} + llama-quantize {_recipe_label(job, plan)}"
        return _requantizing(job, plan, kv, source, imatrix, view.architecture, pipeline, _closing(source, view),
                             stages, source.read_ahead if _overlaps(view) else None)  # fmt: skip
    except BaseException:
        view.close()
        raise


# --------------------------------------------------------------------------------------------------------
# Packed safetensors


def _run_packed(job: Job, progress: bool, on_tensor: OnTensor | None) -> dict[str, Any]:
    from quantcli.loaders import open_checkpoint
    from quantcli.quants.packed import MODEL_DTYPES, Scheme
    from quantcli.writers.packed import is_linear_weight, write_packed

    target = job.target
    fmt = target.packed_format
    out_path = _planned_output(job)
    if not job.dry_run:
        check_output_dir(out_path, job.force, inputs=job.input_files())
    from quantcli.arch import get_arch  # the architecture tables import gguf-py: not on a GGUF -> GGUF run

    with open_checkpoint(job.source) as ckpt:
        spec = get_arch(ckpt.config, where=str(ckpt.directory / "config.json"))
        if not spec.packed_formats:
            raise Unsupported(
                f"--format {target.format}: {spec.hf_architectures[0]} has weights that are not Linear layers "
                "(router, stacked experts); convert it to GGUF"
            )
        # scales (and the tensors kept as they are) live in the model's dtype
        dtype = fmt.model_dtype or str(ckpt.config.get("torch_dtype") or "bfloat16")
        assert target.bits is not None and target.group_size is not None
        scheme = Scheme(target.bits, target.group_size, dtype if dtype in MODEL_DTYPES else "bfloat16")
        names = ckpt.tensor_names()
        for n in names:  # the per-row check write_packed also makes, before any compute
            shape = ckpt.tensor_info(n).shape
            if is_linear_weight(n, shape):
                fmt.check(scheme, shape[1])
        # Packed formats have no fallback types: a row the group size does not divide is refused above,
        # so --strict has nothing more to refuse.
        if job.dry_run:
            return packed_plan_result(job, ckpt, fmt, scheme, out_path)
        if job.calibration is not None:
            return _run_packed_calibrated(job, ckpt, fmt, scheme, out_path, progress, on_tensor)
        bar = CountProgress(len(names)) if progress else None
        done = [0]

        def tensor_done(name: str) -> None:
            done[0] += 1
            if bar is not None:
                bar.advance(name)
            if on_tensor is not None:
                info = ckpt.tensor_info(name)
                qtype = _SAFETENSORS_TYPES.get(info.dtype, GGMLQuantizationType.F32)
                on_tensor(OutputTensor(name, tuple(reversed(info.shape)), qtype), done[0], len(names))

        try:
            written = write_packed(ckpt, out_path, fmt, scheme, force=job.force,
                                   max_shard_size=target.max_shard_size, on_tensor=tensor_done)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        return packed_result(job, written, scheme, ckpt)


def _run_packed_calibrated(
    job: Job, ckpt: Any, fmt: Any, scheme: Any, out_path: Path, progress: bool, on_tensor: OnTensor | None
) -> dict[str, Any]:
    """Calibrate every packed linear into a spill directory (block by block), then write the directory."""
    import dataclasses as dc

    from quantcli.engine.awq import calibrate_packed_awq
    from quantcli.engine.calibrate import calibrate_packed
    from quantcli.writers.packed import is_linear_weight, write_packed

    assert job.calibration is not None
    if job.calibration.uses_gptq and job.calibration.act_order is not False and fmt.carries_g_idx:
        scheme = dc.replace(scheme, act_order=True)
    names = ckpt.tensor_names()
    linear = {n for n in names if is_linear_weight(n, ckpt.tensor_info(n).shape)}
    with spill_store(out_path, _resume_key(job)) as store:
        bar = CountProgress(0) if progress else None
        try:
            calibrate_stage = calibrate_packed_awq if job.calibration.uses_awq else calibrate_packed
            facts = calibrate_stage(job.calibration, Path(job.source), linear, fmt, scheme, store,
                                    _block_progress(bar))  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        written = write_packed(ckpt, out_path, fmt, scheme, force=job.force, max_shard_size=job.target.max_shard_size,
                               calibrated=store.get)  # fmt: skip
    result = packed_result(job, written, scheme, ckpt)
    result["calibration"] = facts
    if on_tensor is not None:
        for i, name in enumerate(names, 1):
            info = ckpt.tensor_info(name)
            qtype = _SAFETENSORS_TYPES.get(info.dtype, GGMLQuantizationType.F32)
            on_tensor(OutputTensor(name, tuple(reversed(info.shape)), qtype), i, len(names))
    return result


# --------------------------------------------------------------------------------------------------------
# Verify


def _verify(job: Job, result: dict[str, Any]) -> None:
    from quantcli.runtime.verify import DEFAULT_MAX_KLD, verify

    assert job.verify is not None
    opts = job.verify
    report = verify(
        job.source,
        result["output"],
        text=opts.eval_text,
        max_kld=DEFAULT_MAX_KLD if opts.max_kld is None else opts.max_kld,
        chunks=4 if opts.chunks is None else opts.chunks,
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
