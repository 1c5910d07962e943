"""The calibration stage of a job (`--method gptq`): between plan and stream, one decoder block at a time.

The runtime (quantcli.runtime.calibrate) runs the source checkpoint block by block over the calibration
samples and collects each linear's input Hessian; this stage quantizes the block's linears with GPTQ on the
output's grid, stores the results in a spill directory (one file per tensor, so memory holds one block), and
returns the values the output will hold, which the runtime feeds to the next block. The sink then writes
the stored tensors where the plain quantizer's would have gone; every other tensor streams as usual.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantcli.errors import InputInvalid, InputMissing, Unsupported, UsageError
from quantcli.quants.packed import MODEL_DTYPES, PackedFormat, Scheme

# Every job reads its calibration options here; GPTQ and threadpoolctl are imported only by a job that
# calibrates (a plain quantize's start-up is most of its time).
if TYPE_CHECKING:  # the runtime and the HF source are opened only by a calibrating job
    from quantcli.quants.gptq import GPTQConfig, Hessian
    from quantcli.runtime.calibrate import BlockInputs, CalibrationText, ExpertInputs
    from quantcli.runtime.hf import HFSource
    from quantcli.runtime.model import Model
    from quantcli.sources.hf import SourceTensor

# rtn: no calibration (round-to-nearest / llama.cpp's quantizers); awq: AWQ scales, then round-to-nearest;
# awq-gptq: AWQ scales, then GPTQ on the folded weights (engine/awq.py)
# GPTQ's damping fraction when --damp is not given: 0.1, not the 0.01 of llm-compressor and GPTQModel. On the
# off-grid SmolLM2 with 32 × 512 calibration tokens, ct 4-bit g64 KLD went from 0.956× to 0.917×
# llm-compressor's, and held-out layer errors of ffn_down (1536 inputs) were lower (docs/calibration.md).
DEFAULT_DAMP = 0.1

METHODS = ("rtn", "gptq", "awq", "awq-gptq")


@dataclass(frozen=True)
class CalibrationOptions:
    """`--method` and the calibration data options (docs/calibration.md)."""

    method: str = "gptq"
    files: tuple[str, ...] = ()  # --calib; empty: the bundled text
    samples: int | None = None  # --calib-samples (default runtime.calibrate.DEFAULT_SAMPLES)
    seq_len: int | None = None  # --calib-seq-len (default runtime.calibrate.DEFAULT_SEQ_LEN)
    # GPTQ columns by decreasing Hessian diagonal: None = the default (on for packed formats; GGUF grids
    # visit columns in order)
    act_order: bool | None = None
    damp: float = 0.1  # GPTQ damping, a fraction of mean diag(H) (DEFAULT_DAMP)

    def input_files(self) -> list[Path]:
        return [Path(p) for p in self.files]

    @property
    def uses_gptq(self) -> bool:
        return self.method in ("gptq", "awq-gptq")

    @property
    def uses_awq(self) -> bool:
        return self.method in ("awq", "awq-gptq")


def calibration_options(
    method: str | None,
    calib: tuple[str, ...] | list[str] = (),
    samples: int | None = None,
    seq_len: int | None = None,
    act_order: bool | None = None,
    damp: float | None = None,
) -> CalibrationOptions | None:
    """The options of a job, or None for round-to-nearest; contradictions are UsageError before any work."""
    method = (method or "rtn").lower()
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r} (supported: {', '.join(METHODS)})")
    given = [flag for flag, value in (("--calib", calib), ("--calib-samples", samples),
             ("--calib-seq-len", seq_len), ("--act-order", act_order), ("--damp", damp)) if value]  # fmt: skip
    if method == "rtn":
        if given:
            raise UsageError(f"{', '.join(given)} need --method gptq, awq or awq-gptq")
        return None
    gptq_only = [flag for flag in given if flag in ("--act-order", "--damp")]
    if method == "awq" and gptq_only:
        raise UsageError(f"{', '.join(gptq_only)}: GPTQ options (--method gptq or awq-gptq)")
    if samples is not None and samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, not {samples}")
    if seq_len is not None and seq_len < 8:
        raise UsageError(f"--calib-seq-len must be at least 8, not {seq_len}")
    if damp is not None and not 0.0 < damp < 1.0:
        raise UsageError(f"--damp must be in (0, 1), not {damp}")
    for path in calib:
        if not Path(path).is_file():
            raise InputMissing(f"--calib {path} does not exist")
    return CalibrationOptions(
        method, tuple(str(p) for p in calib), samples, seq_len, act_order, DEFAULT_DAMP if damp is None else damp
    )


def check_packed_format(opts: CalibrationOptions, fmt: type[PackedFormat], scheme: Scheme) -> None:
    """Refuse a format that cannot hold GPTQ's grid before anything is opened (AWQ with round-to-nearest
    goes into every format)."""
    if opts.uses_gptq and fmt.gptq_scale_dtype(scheme) is None:
        raise Unsupported(f"--method {opts.method} cannot be stored in --format {fmt.name} (use ct, gptq or mlx)")


class SpillStore:
    """Quantized tensors kept on disk between the calibration stage and the sink: one raw file per array,
    their dtypes and shapes in `index.json` (NumPy's .npy cannot describe bfloat16), with the blocks done.

    With a `key` (--resume: what decides the output's bytes) a store left by an interrupted run of the same
    job is reopened and its finished blocks are replayed instead of calibrated again."""

    def __init__(self, directory: Path, key: str | None = None) -> None:
        self.directory = directory
        self.key = key
        self.parts: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
        self.blocks: dict[int, list[str]] = {}
        index = directory / "index.json"
        if key is not None and index.is_file():
            saved = json.loads(index.read_text())
            if saved.get("key") == key:
                self.parts = {n: {part: (d, tuple(shape)) for part, (d, shape) in parts.items()}
                              for n, parts in saved["parts"].items()}  # fmt: skip
                self.blocks = {int(layer): names for layer, names in saved["blocks"].items()}
                return
        if directory.exists():
            shutil.rmtree(directory)  # another job's, or an interrupted run's without --resume
        directory.mkdir(parents=True)

    def put(self, name: str, tensors: dict[str, np.ndarray]) -> None:
        for part, array in tensors.items():
            (self.directory / f"{name}.{part}").write_bytes(np.ascontiguousarray(array).tobytes())
        self.parts[name] = {part: (array.dtype.name, array.shape) for part, array in tensors.items()}

    def get(self, name: str) -> dict[str, np.ndarray] | None:
        parts = self.parts.get(name)
        if parts is None:
            return None
        return {
            part: np.fromfile(self.directory / f"{name}.{part}", dtype=np.uint8).view(_dtype(d)).reshape(shape)
            for part, (d, shape) in parts.items()
        }

    def block_done(self, layer: int, names: list[str]) -> None:
        """Record a finished block (the GGUF names of the linears it quantized); with a key, durably."""
        self.blocks[layer] = names
        if self.key is None:
            return
        index = {"key": self.key, "parts": self.parts, "blocks": self.blocks}
        tmp = self.directory / "index.json.tmp"
        tmp.write_text(json.dumps(index))
        tmp.replace(self.directory / "index.json")


def _dtype(name: str) -> np.dtype:
    return np.dtype(MODEL_DTYPES[name]) if name in MODEL_DTYPES else np.dtype(name)


@contextmanager
def spill_store(output: Path, key: str | None = None) -> Iterator[SpillStore]:
    """The spill directory beside the output (same filesystem). Removed afterwards; with a resume `key`
    it is kept when the job fails, for the next run of the same job to continue from."""
    store = SpillStore(output.parent / f".{output.name}.calibration", key)
    try:
        yield store
    except BaseException:
        if key is None:
            shutil.rmtree(store.directory, ignore_errors=True)
        raise
    shutil.rmtree(store.directory, ignore_errors=True)


# One linear's calibrated quantization: (GGUF name, the converter's view of it, its input Hessian) -> the
# values the output will hold, float32 in GGUF orientation, or None to leave the tensor to the sink.
QuantizeLinear = Callable[[str, "SourceTensor", "Hessian"], "np.ndarray | None"]
# The same for a stacked expert tensor (n_expert, rows, cols): its inputs give each expert's Hessian.
QuantizeExperts = Callable[[str, "SourceTensor", "ExpertInputs"], "np.ndarray | None"]


def under_sampled(tokens: np.ndarray, width: int) -> list[int]:
    """The experts whose matrix of `width` inputs saw too few calibration tokens for GPTQ: fewer than its
    input width, so XᵀX has less than full rank and GPTQ would push rounding errors into input directions
    no calibration token measured (docs/calibration.md, "Mixture of experts"). They are rounded to nearest."""
    return [int(e) for e in np.nonzero(tokens < width)[0]]


def expert_report(tokens: dict[int, np.ndarray], widths: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    """`calibration.experts` (docs/json.md): per MoE layer the tokens routed to each expert and, per stacked
    tensor (by its GGUF base name, e.g. ffn_down_exps), the under-sampled experts rounded to nearest."""
    report = []
    for layer in sorted(tokens):
        lists = {base: under_sampled(tokens[layer], width) for base, width in sorted(widths[layer].items())}
        report.append({
            "layer": layer,
            "tokens": [int(t) for t in tokens[layer]],
            "under_sampled": {base: experts for base, experts in lists.items() if experts},
        })
    return report


@dataclass
class CalibrationRun:
    """What every calibrating method opens first: the source checkpoint in the runtime (plain float32) and
    the calibration samples, tokenized as the model's vocabulary does."""

    opts: CalibrationOptions
    hf: HFSource
    model: Model
    samples: np.ndarray  # (S, T) token ids
    text: CalibrationText
    started: float

    @classmethod
    def open(
        cls,
        opts: CalibrationOptions,
        source: Path,
        check: Callable[[Model], None] | None = None,
        moe_refusal: str | None = None,
    ) -> CalibrationRun:
        """`check(model)` refuses a model the method cannot handle before the text is read;
        `moe_refusal`, when given, is why a mixture of experts is refused (a caller that cannot calibrate
        stacked experts)."""
        from quantcli.runtime import load_tokenizer
        from quantcli.runtime.calibrate import (
            DEFAULT_SAMPLES,
            DEFAULT_SEQ_LEN,
            calibration_samples,
            read_calibration_text,
        )
        from quantcli.runtime.hf import HFSource
        from quantcli.runtime.model import Model

        started = time.perf_counter()
        hf = HFSource(source)
        model = Model(hf, cache_budget_bytes=0, emulate_ggml=False)
        stacked = sorted(n for n in model.names if n.endswith("_exps.weight"))
        if stacked and moe_refusal is not None:
            raise Unsupported(
                f"--method {opts.method}: {source} is a mixture of experts ({stacked[0]}); {moe_refusal}"
            )
        if check is not None:
            check(model)
        text = read_calibration_text(opts.files)
        samples = calibration_samples(
            load_tokenizer(source, hf), text.text, opts.samples or DEFAULT_SAMPLES, opts.seq_len or DEFAULT_SEQ_LEN
        )
        return cls(opts, hf, model, samples, text, started)

    def facts(self) -> dict[str, Any]:
        """The `calibration` keys every method reports (docs/json.md)."""
        return {
            "method": self.opts.method,
            "text": list(self.text.sources),
            "text_sha256": self.text.sha256,
            "samples": int(self.samples.shape[0]),
            "seq_len": int(self.samples.shape[1]),
            "tokens": int(self.samples.size),
            "damp": self.opts.damp,
            "seconds": round(time.perf_counter() - self.started, 3),
        }


def run_calibration(
    opts: CalibrationOptions,
    source: Path,
    quantize_linear: QuantizeLinear,
    store: SpillStore,
    replay_linear: Callable[[str, SourceTensor], np.ndarray],
    on_block: Callable[[int, int], None] | None = None,
    quantize_experts: QuantizeExperts | None = None,
    moe_refusal: str | None = None,
) -> dict[str, Any]:
    """Run the checkpoint at `source` block by block over the calibration samples, calling
    `quantize_linear(gguf_name, source_tensor, hessian)` for every linear the runtime feeds and
    `quantize_experts(gguf_name, source_tensor, expert_inputs)` for every stacked expert tensor (a caller
    without it refuses a mixture of experts with `moe_refusal`); a block the store already holds (a resumed
    run) is replayed with `replay_linear(gguf_name, source_tensor)`, the values its stored tensors decode
    to. Returns the facts for the result's `calibration` key (the caller adds its own); a mixture of experts
    adds `experts` (expert_report)."""
    from quantcli.runtime.calibrate import calibrate_blocks

    assert quantize_experts is not None or moe_refusal is not None
    run = CalibrationRun.open(opts, source, moe_refusal=moe_refusal)
    from threadpoolctl import threadpool_limits

    hf = run.hf
    quantize_seconds = [0.0]

    def quantize_block(block: BlockInputs) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}
        for name, hessian in block.hessians.items():
            t0 = time.perf_counter()
            # One BLAS thread: GPTQ is a column loop of small products and one Cholesky, which threads
            # slow down (a 1536² Cholesky took 13x longer with two threads on a busy 2-core machine).
            with threadpool_limits(limits=1, user_api="blas"):
                quantized = quantize_linear(name, hf.source_tensor(name), hessian)
            quantize_seconds[0] += time.perf_counter() - t0
            if quantized is not None:
                values[name] = quantized
        for name, inputs in sorted(block.experts.items()):
            assert quantize_experts is not None
            t0 = time.perf_counter()
            expert_tokens[block.layer] = inputs.tokens()  # the same routing for the layer's three stacks
            # not under one BLAS thread: the experts' Gram products use them (GPTQ limits its own)
            quantized = quantize_experts(name, hf.source_tensor(name), inputs)
            quantize_seconds[0] += time.perf_counter() - t0
            if quantized is not None:
                values[name] = quantized
        if block.layer in expert_tokens:  # kept for a resumed run's report
            store.put(_expert_tokens_key(block.layer), {"tokens": expert_tokens[block.layer]})
        store.block_done(block.layer, sorted(values))
        return values

    def replay(layer: int) -> dict[str, np.ndarray] | None:
        names = store.blocks.get(layer)
        if names is None:
            return None
        replayed.append(layer)
        tokens = store.get(_expert_tokens_key(layer))
        if tokens is not None:
            expert_tokens[layer] = tokens["tokens"]
        return {name: replay_linear(name, hf.source_tensor(name)) for name in names}

    replayed: list[int] = []
    expert_tokens: dict[int, np.ndarray] = {}
    calibrate_blocks(run.model, run.samples, quantize_block, on_block=on_block, replay=replay)
    facts = run.facts()
    facts.update({"quantize_seconds": round(quantize_seconds[0], 3), "resumed_blocks": len(replayed)})
    if expert_tokens:
        stacks = [name for name in hf.names() if name.endswith("_exps.weight")]
        widths = {layer: {name.removeprefix(f"blk.{layer}.").removesuffix(".weight"): hf.shape(name)[-1]
                          for name in stacks if name.startswith(f"blk.{layer}.")}
                  for layer in expert_tokens}  # fmt: skip
        facts["experts"] = expert_report(expert_tokens, widths)
    return facts


def _expert_tokens_key(layer: int) -> str:
    return f"blk.{layer}.expert_tokens"  # no tensor of the output has this name


def source_weight(tensor: Any, name: str) -> np.ndarray:
    """A linear's stored weight as float32 (HF orientation); the checkpoint's mapped pages are dropped from
    our RSS once read, so memory follows one block, not every block calibrated so far."""
    weight = np.array(tensor.read(), dtype=np.float32)  # a copy: the release below must not reach it
    if tensor.release is not None:
        tensor.release()
    if not np.isfinite(weight).all():
        *expert, row, col = (int(i) for i in np.argwhere(~np.isfinite(weight))[0])
        where = f"expert {expert[0]}, " if expert else ""
        raise InputInvalid(f"{name}: non-finite value at {where}row {row}, column {col}")
    return weight


# Packed formats store each expert as its own Linear, under the checkpoint's per-expert names; the
# calibration stage works on the runtime's stacked tensors and writes GGUF only.
PACKED_MOE_REFUSAL = (
    "calibrated packed formats handle dense models only "
    "(calibrate to GGUF: --type, or --bits without --format)"
)


def packed_gptq_config(opts: CalibrationOptions, fmt: type[PackedFormat], scheme: Scheme) -> GPTQConfig:
    """GPTQ's configuration for a packed format."""
    scale_dtype = fmt.gptq_scale_dtype(scheme)
    assert scale_dtype is not None
    # Act-order groups follow the processing order only where the format stores g_idx; elsewhere the
    # groups stay contiguous and act-order only changes the order columns are visited in.
    act_order = opts.act_order is not False
    dynamic_groups = act_order and fmt.carries_g_idx
    from quantcli.quants.gptq import GPTQConfig

    config = GPTQConfig(
        bits=scheme.bits, group_size=scheme.group_size, damp=opts.damp, block_size=128,
        act_order=act_order, scales="dynamic" if not act_order or dynamic_groups else "static",
        scale_dtype=scale_dtype,
    )  # fmt: skip
    return config


def packed_gptq_facts(config: GPTQConfig, fmt: type[PackedFormat]) -> dict[str, Any]:
    """The `calibration` keys saying how GPTQ ran on a packed format (docs/json.md)."""
    order = "g_idx" if config.act_order and fmt.carries_g_idx else "contiguous"
    return {"act_order": config.act_order, "group_order": order, "scales": config.scales}


def require_fed(linear_names: set[str], done: set[str]) -> None:
    """Every linear the packed writer quantizes was calibrated (the runtime fed its inputs)."""
    missing = sorted(linear_names - done)
    if missing:
        raise Unsupported(f"calibration: the runtime never fed {missing[0]} ({len(missing)} linears without inputs)")


def calibrate_packed(
    opts: CalibrationOptions,
    source: Path,
    linear_names: set[str],
    fmt: type[PackedFormat],
    scheme: Scheme,
    store: SpillStore,
    on_block: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """GPTQ every packed linear (HF names `linear_names`) of the checkpoint at `source` into `store` (the
    format's tensors under the HF weight name); returns the facts for the result's `calibration` key."""
    from quantcli.quants.gptq import gptq_quantize

    config = packed_gptq_config(opts, fmt, scheme)
    done: set[str] = set()
    raised: dict[str, float] = {}

    def quantize_linear(name: str, tensor: SourceTensor, hessian: Hessian) -> np.ndarray | None:
        if tensor.source_name not in linear_names:
            return None
        weight = source_weight(tensor, tensor.source_name)  # HF orientation: columns are the inputs
        result = gptq_quantize(weight, hessian.matrix, config)
        if result.damp != opts.damp:
            raised[tensor.source_name] = round(result.damp, 4)
        g_idx = result.g_idx if fmt.carries_g_idx else None
        tensors = fmt.from_codes(result.codes, result.scales, g_idx, scheme)
        store.put(tensor.source_name, tensors)
        done.add(tensor.source_name)
        # The values the client computes with, in the runtime's (GGUF) orientation, for the next block.
        return np.asarray(tensor.transform(fmt.dequantize(tensors, scheme)), dtype=np.float32)

    def replay_linear(name: str, tensor: SourceTensor) -> np.ndarray:
        stored = store.get(tensor.source_name)
        if stored is None:
            raise InputInvalid(f"{store.directory}: {tensor.source_name} is missing; delete the directory")
        done.add(tensor.source_name)
        return np.asarray(tensor.transform(fmt.dequantize(stored, scheme)), dtype=np.float32)

    facts = run_calibration(opts, source, quantize_linear, store, replay_linear, on_block,
                            moe_refusal=PACKED_MOE_REFUSAL)  # fmt: skip
    require_fed(linear_names, done)
    return facts | packed_gptq_facts(config, fmt) | {"damp_raised": raised}


def calibrate_gguf(
    opts: CalibrationOptions,
    source: Path,
    decisions: dict[str, Any],
    importance: Callable[[str, Any], np.ndarray | None],
    store: SpillStore,
    threads: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """GPTQ on the GGML grid of each linear's planned type (`decisions`: GGUF name -> TensorDecision), the
    bytes into `store` under the GGUF name. A linear whose type has no GPTQ grid (TQ*, MXFP4, floats) is
    quantized as llama-quantize does and only its values go on to the next block."""
    from threadpoolctl import threadpool_limits

    from quantcli import quants
    from quantcli.quants.ggml import GridQuantType
    from quantcli.quants.gptq_ggml import gptq_ggml

    calibrated: list[str] = []
    plain: dict[str, str] = {}

    def quantize_linear(name: str, tensor: SourceTensor, hessian: Hessian) -> np.ndarray | None:
        d = decisions.get(name)
        if d is None or not d.changes:
            return None  # kept at the source's precision: the next block sees the source values
        weight = source_weight(tensor, name)
        weight = np.asarray(tensor.transform(weight), dtype=np.float32)  # GGUF orientation
        imatrix = importance(name, d)
        if issubclass(quants.get(d.type), GridQuantType):
            result = gptq_ggml(weight, hessian.matrix, d.type, damp=opts.damp, importance=imatrix, name=name,
                               threads=threads)  # fmt: skip
            store.put(name, {"data": result.data})
            calibrated.append(name)
            return result.values
        return round_to_nearest(name, d, weight, imatrix)

    def round_to_nearest(name: str, d: Any, weight: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        plain[name] = d.type.name
        data = quants.quantize(weight, d.type, imatrix, name=name, threads=threads)
        return quants.dequantize(data, d.type, weight.shape)

    def quantize_experts(name: str, tensor: SourceTensor, inputs: ExpertInputs) -> np.ndarray | None:
        """Expert by expert: GPTQ with the Hessian of the tokens routed to it, or, for an expert that saw
        fewer tokens than the matrix's input width (`under_sampled`), what the round-to-nearest recipe
        makes of it (the same bytes). The stacked bytes are the experts' one after another."""
        d = decisions.get(name)
        if d is None or not d.changes:
            return None
        stack = np.asarray(tensor.transform(source_weight(tensor, name)), dtype=np.float32)  # (E, rows, cols)
        imatrix = importance(name, d)  # (E·cols,) for a stacked tensor, or None
        if not issubclass(quants.get(d.type), GridQuantType):
            return round_to_nearest(name, d, stack, imatrix)
        n_expert, _, width = stack.shape
        rounded = set(under_sampled(inputs.tokens(), width))
        data: list[np.ndarray] = []
        values = np.empty_like(stack)
        for e in range(n_expert):
            own = imatrix[e * width : (e + 1) * width] if imatrix is not None else None
            if e in rounded:
                data.append(quants.quantize(stack[e], d.type, own, name=name, threads=threads))
                values[e] = quants.dequantize(data[-1], d.type, stack[e].shape)
                continue
            hessian = inputs.hessian(e, name)  # a Gram product: BLAS threads help here, not in GPTQ's loop
            with threadpool_limits(limits=1, user_api="blas"):
                result = gptq_ggml(stack[e], hessian.matrix, d.type, damp=opts.damp, importance=own,
                                   name=f"{name} expert {e}", threads=threads)  # fmt: skip
            del hessian
            data.append(result.data)
            values[e] = result.values
        store.put(name, {"data": np.concatenate(data)})
        calibrated.append(name)
        return values

    def replay_linear(name: str, tensor: SourceTensor) -> np.ndarray:
        d = decisions[name]
        stored = store.get(name)
        if stored is not None:
            calibrated.append(name)
            return quants.dequantize(stored["data"], d.type, tensor.shape)
        # a linear without a GPTQ grid: its round-to-nearest values again (deterministic)
        weight = np.asarray(tensor.transform(source_weight(tensor, name)), dtype=np.float32)
        plain[name] = d.type.name
        data = quants.quantize(weight, d.type, importance(name, d), name=name, threads=threads)
        return quants.dequantize(data, d.type, weight.shape)

    facts = run_calibration(opts, source, quantize_linear, store, replay_linear, on_block, quantize_experts)
    # a stack without a GPTQ grid is rounded whole and listed in round_to_nearest, never under-sampled
    for entry in facts.get("experts", []):
        entry["under_sampled"] = {base: experts for base, experts in entry["under_sampled"].items()
                                  if f"blk.{entry['layer']}.{base}.weight" not in plain}  # fmt: skip
    facts.update({"act_order": False, "calibrated_tensors": len(calibrated), "round_to_nearest": plain})
    return facts
