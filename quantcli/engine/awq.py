"""`--method awq` and `--method awq-gptq` in the calibration stage: AWQ scales per decoder block, folded into
the weights, then round-to-nearest (awq) or GPTQ (awq-gptq) on the target's grid — packed formats and GGUF
recipes alike. docs/calibration.md ("AWQ in the engine") gives the decisions and the measurements.

Per block, on the runtime's float32 forward (the input rows come from the already quantized previous
blocks): for each scaling group of `quants.awq.llama_scaling_groups` (mlx-lm's order) the scales are
searched against the target's own fake quantizer of each linear; the loss is the whole block's output for
q/k/v (on the first LOSS_TOKENS tokens' sequences: attention needs whole sequences), the MLP's output for
gate/up and the linear's own output for down (and o). The chosen scales are folded — 1/s into the norm
(stored in the output's precision; the columns then take exactly the scale that rounding left) or into
the previous linear's rows, s into the linears' columns — and the block's linears are quantized from the
folded weights. If the block's output is then further from the float block than without AWQ, the block
keeps its plain quantization (mlx-lm's fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from quantcli.engine.calibrate import (
    CalibrationOptions,
    CalibrationRun,
    SpillStore,
    packed_gptq_config,
    packed_gptq_facts,
    require_fed,
    source_weight,
)
from quantcli.errors import Unsupported
from quantcli.quants.awq import (
    NO_CLIP,
    QuantizeDequantize,
    awq_search,
    clip_search,
    fold_into_linear,
    fold_into_norm,
    ggml_fake_quantizer,
    llama_scaling_groups,
    packed_fake_quantizer,
    scale_columns,
)
from quantcli.quants.gptq import gptq_quantize
from quantcli.quants.packed import PackedFormat, Scheme
from quantcli.quants.packed.base import round_to

if TYPE_CHECKING:
    from quantcli.runtime.calibrate import BlockInputs
    from quantcli.runtime.hf import HFSource

# Architectures whose blocks are Llama's (separate q/k/v and gate/up, RMSNorm multiplying by w, SwiGLU).
# Qwen3's q/k norms act on q/k after the projection, per head: scaling the projections' input columns
# leaves them alone. Phi-3's fused qkv / gate_up and Gemma's (1 + w) norms and post-norms are not handled.
AWQ_ARCHITECTURES = ("llama", "qwen2", "qwen3")
# A mixture of experts: the scales before the experts' gate/up would have to be searched on the whole MoE
# block (router and every expert), with the router seeing the unscaled input; not implemented.
AWQ_MOE_REFUSAL = "AWQ handles dense models only (use --method gptq)"
# Tokens the search's loss runs on: the leading samples holding at most this many tokens (at least one
# sample). The mean |x| statistic uses every token. The loss costs 20 trial forwards per group plus the
# fallback's three: on SmolLM2 (2-core machine) 1024 tokens keep a block's search near 10 s of CPU, half
# of it the q/k/v group's whole-block runs.
LOSS_TOKENS = 1024
# Tokens clip_search compares partial products on (mlx-lm: 512; its einsum is a third of a block's time).
CLIP_FRAMES = 256

# The HF-relative module names of llama_scaling_groups -> the GGUF tensor of the block
_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip
_NO_CLIP = tuple(_GGUF[f"self_attn.{n}"] for n in NO_CLIP)
_LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Folded:
    """One linear of the block after the search: its input-column scales and output-row divisors."""

    name: str  # GGUF name
    columns: np.ndarray | None  # s (in,): the weight's columns are multiplied by it
    rows: np.ndarray | None  # s (out,): the weight's rows are divided by it (it feeds a scaled linear)
    x: np.ndarray  # the linear's input rows (loss tokens), as the folded weight sees them (x / columns)

    def hessian(self, matrix: np.ndarray) -> np.ndarray:
        """The input Hessian of the folded weight: its inputs are x / s, so H / (s sᵀ)."""
        return matrix if self.columns is None else matrix / np.outer(self.columns, self.columns)

    def fold(self, weight: np.ndarray) -> np.ndarray:
        """The source weight (any row order: rows are only divided for v and up, which no layout permutes)."""
        w = np.asarray(weight, dtype=np.float32)
        if self.columns is not None:
            w = scale_columns(w, self.columns)
        if self.rows is not None:
            w = fold_into_linear(w, self.rows)
        return w


@dataclass
class Quantized:
    values: np.ndarray  # float32, GGUF orientation: what the output holds (for the next block's input)
    stored: tuple[str, dict[str, np.ndarray]] | None  # (store key, tensors), None: the sink's own


class Target:
    """What the search and the final quantization need from the output: each linear's fake quantizer, its
    quantization (RTN or GPTQ) from the folded weight, and a norm as the output stores it."""

    def fake(self, name: str) -> QuantizeDequantize:
        raise NotImplementedError

    def quantize(self, linear: Folded, hessian: np.ndarray, gptq: bool) -> Quantized:
        raise NotImplementedError

    def norm(self, name: str, values: np.ndarray) -> Quantized:
        raise NotImplementedError

    def replay(self, name: str, store: SpillStore) -> np.ndarray:
        """What the output holds for GGUF tensor `name`, from what a finished block put into `store` (a
        resumed run): the `values` its `quantize` or `norm` returned."""
        raise NotImplementedError


class PackedTarget(Target):
    def __init__(self, hf: HFSource, fmt: type[PackedFormat], scheme: Scheme, opts: CalibrationOptions,
                 clip: bool) -> None:  # fmt: skip
        self.hf, self.fmt, self.scheme, self.clip = hf, fmt, scheme, clip
        self.config = packed_gptq_config(opts, fmt, scheme) if opts.uses_gptq else None
        self.fake_quantizer = packed_fake_quantizer(fmt, scheme)
        self.done: set[str] = set()

    def fake(self, name: str) -> QuantizeDequantize:
        return self.fake_quantizer

    def quantize(self, linear: Folded, hessian: np.ndarray, gptq: bool) -> Quantized:
        tensor = self.hf.source_tensor(linear.name)
        weight = linear.fold(source_weight(tensor, tensor.source_name))  # HF orientation
        if gptq:
            assert self.config is not None
            result = gptq_quantize(weight, linear.hessian(hessian), self.config)
            g_idx = result.g_idx if self.fmt.carries_g_idx else None
            tensors = self.fmt.from_codes(result.codes, result.scales, g_idx, self.scheme)
        else:
            if self.clip and linear.columns is not None and linear.name.split(".")[2] not in _NO_CLIP:
                weight = clip_search(
                    linear.x, weight, self.fake_quantizer, self.scheme.group_size, n_frames=CLIP_FRAMES
                )
            tensors = self.fmt.quantize(weight, self.scheme)
        values = np.asarray(tensor.transform(self.fmt.dequantize(tensors, self.scheme)), dtype=np.float32)
        return Quantized(values, (tensor.source_name, tensors))

    def norm(self, name: str, values: np.ndarray) -> Quantized:
        stored = values.astype(self.scheme.np_dtype)
        return Quantized(round_to(values, self.scheme.dtype), (self.hf.source_tensor(name).source_name,
                                                               {"weight": stored}))  # fmt: skip

    def replay(self, name: str, store: SpillStore) -> np.ndarray:
        tensor = self.hf.source_tensor(name)
        tensors = store.get(tensor.source_name)
        assert tensors is not None, name
        if name.endswith("_norm.weight"):
            return np.asarray(tensors["weight"], dtype=np.float32)
        return np.asarray(tensor.transform(self.fmt.dequantize(tensors, self.scheme)), dtype=np.float32)


class GGUFTarget(Target):
    def __init__(self, hf: HFSource, decisions: dict[str, Any], importance: Callable[[str, Any], np.ndarray | None],
                 opts: CalibrationOptions, threads: int | None) -> None:  # fmt: skip
        self.hf, self.decisions, self.importance, self.opts, self.threads = (
            hf,
            decisions,
            importance,
            opts,
            threads,
        )
        self.round_to_nearest: dict[str, str] = {}

    def fake(self, name: str) -> QuantizeDequantize:
        d = self.decisions[name]
        if not d.changes:
            return lambda w: w  # kept at the source's precision
        return ggml_fake_quantizer(d.type)

    def _imatrix(self, linear: Folded, d: Any) -> np.ndarray | None:
        imatrix = self.importance(linear.name, d)
        if imatrix is None or linear.columns is None:
            return imatrix
        return (np.asarray(imatrix, dtype=np.float32) / (linear.columns * linear.columns)).astype(np.float32)

    def quantize(self, linear: Folded, hessian: np.ndarray, gptq: bool) -> Quantized:
        from quantcli import quants
        from quantcli.quants.ggml import GridQuantType
        from quantcli.quants.gptq_ggml import gptq_ggml

        d = self.decisions[linear.name]
        tensor = self.hf.source_tensor(linear.name)
        weight = linear.fold(
            np.asarray(tensor.transform(source_weight(tensor, linear.name)), dtype=np.float32)
        )
        if not d.changes and linear.columns is None and linear.rows is None:
            return Quantized(weight, None)  # untouched and kept: the sink copies the source bytes
        imatrix = self._imatrix(linear, d)
        if gptq and d.changes and issubclass(quants.get(d.type), GridQuantType):
            result = gptq_ggml(weight, linear.hessian(hessian), d.type, damp=self.opts.damp, importance=imatrix,
                               name=linear.name, threads=self.threads)  # fmt: skip
            return Quantized(result.values, (linear.name, {"data": result.data}))
        if gptq and d.changes:
            self.round_to_nearest[linear.name] = d.type.name
        data = quants.quantize(weight, d.type, imatrix, name=linear.name, threads=self.threads)
        return Quantized(quants.dequantize(data, d.type, weight.shape), (linear.name, {"data": data}))

    def norm(self, name: str, values: np.ndarray) -> Quantized:
        from quantcli import quants

        d = self.decisions[name]
        data = quants.quantize(values, d.type, name=name)
        return Quantized(quants.dequantize(data, d.type, values.shape), (name, {"data": data}))

    def replay(self, name: str, store: SpillStore) -> np.ndarray:
        from quantcli import quants

        tensors = store.get(name)
        assert tensors is not None, name
        return quants.dequantize(tensors["data"], self.decisions[name].type, self.hf.source_tensor(name).shape)


def check_awq_architecture(arch: str, activation: str) -> None:
    if arch not in AWQ_ARCHITECTURES or activation != "silu":
        raise Unsupported(
            f"--method awq/awq-gptq: architecture {arch} is not supported (supported: {', '.join(AWQ_ARCHITECTURES)})"
        )


def _silu(g: np.ndarray) -> np.ndarray:
    return g / (np.float32(1.0) + np.exp(-g))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    diff = (a - b).astype(np.float32)
    return float(np.sum(diff * diff, dtype=np.float32) / np.float32(diff.size))


@dataclass
class BlockOutcome:
    values: dict[str, np.ndarray]  # GGUF name -> what the output holds (the next block's weights)
    ratios: dict[str, float]  # group label -> chosen ratio
    kept_plain: bool
    loss_awq: float
    loss_plain: float


def awq_block(
    block: BlockInputs,
    weight: Callable[[str], np.ndarray],
    has: Callable[[str], bool],
    n_head: int,
    n_head_kv: int,
    target: Target,
    gptq: bool,
    loss_sequences: int,
    store: SpillStore | None,
) -> BlockOutcome:
    """Search, fold and quantize one block; the chosen variant's tensors go into `store`."""
    p = f"blk.{block.layer}."
    state = {p + n + ".weight": np.asarray(weight(p + n + ".weight"), dtype=np.float32)
             for n in (*_LINEARS, "attn_norm", "ffn_norm")}  # fmt: skip
    source = dict(state)
    rows = {p + n + ".weight": block.rows[p + n + ".weight"] for n in _LINEARS}
    x_mean = {p + n + ".weight": block.abs_mean[p + n + ".weight"] for n in _LINEARS}
    columns: dict[str, np.ndarray] = {}
    row_div: dict[str, np.ndarray] = {}
    folded_norms: dict[str, np.ndarray] = {}
    ratios: dict[str, float] = {}
    for group in llama_scaling_groups(n_head, n_head_kv):
        prev = p + _GGUF[group.prev] + ".weight"
        names = [p + _GGUF[linear] + ".weight" for linear in group.linears]
        if group.prev == "self_attn.v_proj" and has(p + "attn_v.bias"):
            continue  # the runtime adds biases from the source: a folded v bias would not reach the loss
        forward = None
        if group.block == "self_attn":

            def forward(x: np.ndarray, ws: Any, names: list[str] = names) -> np.ndarray:
                return block.run({**state, **dict(zip(names, ws, strict=True))}, loss_sequences)

        elif group.block == "mlp":
            down = state[p + "ffn_down.weight"]

            def forward(x: np.ndarray, ws: Any, down: np.ndarray = down) -> np.ndarray:
                return (_silu(x @ ws[0].T) * (x @ ws[1].T)) @ down.T

        search = awq_search(rows[names[0]], [state[n] for n in names], [target.fake(n) for n in names], forward,
                            x_mean=x_mean[names[0]])  # fmt: skip
        s = search.scales
        if prev.endswith("_norm.weight"):
            # The norm is stored rounded (bf16 for a packed output): the columns take the scale the rounded
            # norm really divides by, so the fold stays exact.
            norm = target.norm(prev, fold_into_norm(state[prev], s)).values
            s = np.where(norm != 0, state[prev] / np.where(norm != 0, norm, 1), s).astype(np.float32)
            state[prev] = folded_norms[prev] = norm
        else:
            state[prev] = fold_into_linear(state[prev], s)
            row_div[prev] = s
        for n in names:
            state[n] = scale_columns(state[n], s)
            columns[n] = s
            rows[n] = (rows[n] / s).astype(np.float32)
            x_mean[n] = (x_mean[n] / s).astype(np.float32)
        ratios[f"{group.prev}->{'/'.join(group.linears)}"] = search.ratio

    def quantize_all(with_awq: bool) -> dict[str, Quantized]:
        out = {}
        for n in _LINEARS:
            name = p + n + ".weight"
            linear = Folded(name, columns.get(name), row_div.get(name), rows[name]) if with_awq else \
                Folded(name, None, None, block.rows[name])  # fmt: skip
            out[name] = target.quantize(linear, block.hessians[name].matrix, gptq)
        return out

    reference = block.run(source, loss_sequences)
    with_awq = quantize_all(True)
    awq_values = {**{n: q.values for n, q in with_awq.items()}, **folded_norms}
    loss_awq = _mse(reference, block.run(awq_values, loss_sequences))
    plain = quantize_all(False)
    plain_values = {n: q.values for n, q in plain.items()}
    loss_plain = _mse(reference, block.run(plain_values, loss_sequences))
    kept_plain = loss_awq > loss_plain
    chosen = plain if kept_plain else with_awq
    if store is not None:
        stored = [name for name, q in chosen.items() if q.stored is not None]
        for name in stored:
            store.put(*chosen[name].stored)  # type: ignore[misc]
        if not kept_plain:
            for name, values in folded_norms.items():
                q = target.norm(name, values)
                assert q.stored is not None
                store.put(*q.stored)
                stored.append(name)
        store.block_done(block.layer, sorted(stored))  # --resume replays it from here (Target.replay)
    return BlockOutcome(plain_values if kept_plain else awq_values, ratios, kept_plain, loss_awq, loss_plain)


def run_awq(
    opts: CalibrationOptions,
    source: Path,
    make_target: Callable[[HFSource], Target],
    store: SpillStore,
    on_block: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the checkpoint block by block over the calibration samples with AWQ (+ GPTQ) in every block;
    returns the facts for the result's `calibration` key."""
    from quantcli.runtime.calibrate import calibrate_blocks

    def check(model: Any) -> None:
        check_awq_architecture(model.config.arch, model.config.traits.activation)

    run = CalibrationRun.open(opts, source, check, AWQ_MOE_REFUSAL)
    hf, model, samples = run.hf, run.model, run.samples
    config = model.config
    loss_sequences = max(1, min(samples.shape[0], LOSS_TOKENS // samples.shape[1]))
    target = make_target(hf)
    outcomes: dict[int, BlockOutcome] = {}

    def quantize_block(block: BlockInputs) -> dict[str, np.ndarray]:
        # One BLAS thread: GPTQ's column loop and the search's small products gain nothing from threads on
        # a shared machine (engine/calibrate.py measures the same for GPTQ).
        with threadpool_limits(limits=1, user_api="blas"):
            outcome = awq_block(block, model.transient_weight, model.has, config.n_head, config.n_head_kv, target,
                                opts.uses_gptq, loss_sequences, store)  # fmt: skip
        outcomes[block.layer] = outcome
        return outcome.values

    def replay(layer: int) -> dict[str, np.ndarray] | None:
        names = store.blocks.get(layer)
        return None if names is None else {name: target.replay(name, store) for name in names}

    calibrate_blocks(model, samples, quantize_block, on_block=on_block, replay=replay,
                     keep_sequences=loss_sequences)  # fmt: skip
    groups: dict[str, list[float]] = {}
    for outcome in outcomes.values():
        for label, ratio in outcome.ratios.items():
            groups.setdefault(label, []).append(ratio)
    return run.facts() | {
        "loss_tokens": int(loss_sequences * samples.shape[1]),
        "awq_ratios": {
            label: {
                "mean": round(float(np.mean(r)), 4),
                "min": min(r),
                "max": max(r),
                "histogram": {f"{k:.2f}": r.count(k) for k in sorted(set(r))},
            }
            for label, r in groups.items()
        },  # fmt: skip
        "plain_blocks": [layer for layer, o in outcomes.items() if o.kept_plain],
        "block_loss_ratio": [None if o is None else round(o.loss_awq / o.loss_plain, 4) if o.loss_plain else 1.0
                             for o in (outcomes.get(layer) for layer in range(config.n_layer))],  # fmt: skip
        "resumed_blocks": config.n_layer - len(outcomes),
    }


def calibrate_packed_awq(
    opts: CalibrationOptions,
    source: Path,
    linear_names: set[str],
    fmt: type[PackedFormat],
    scheme: Scheme,
    store: SpillStore,
    on_block: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """AWQ (+ GPTQ) every packed linear (HF names `linear_names`) into `store`, the folded norms too (the
    writer takes them instead of the checkpoint's)."""
    facts = run_awq(opts, source, lambda hf: PackedTarget(hf, fmt, scheme, opts, clip=not opts.uses_gptq), store,
                    on_block)  # fmt: skip
    require_fed(linear_names, set(store.parts))
    if opts.uses_gptq:
        facts.update(packed_gptq_facts(packed_gptq_config(opts, fmt, scheme), fmt))
    facts["clip"] = not opts.uses_gptq
    return facts


def calibrate_gguf_awq(
    opts: CalibrationOptions,
    source: Path,
    decisions: dict[str, Any],
    importance: Callable[[str, Any], np.ndarray | None],
    store: SpillStore,
    threads: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """AWQ on each linear's planned GGML type (the search's fake quantizer), then the folded weight
    quantized with `importance / s²` (awq) or GPTQ through quants/gptq_ggml (awq-gptq); the folded norms
    go into `store` at their planned type."""
    holder: list[GGUFTarget] = []

    def make_target(hf: HFSource) -> Target:
        holder.append(GGUFTarget(hf, decisions, importance, opts, threads))
        return holder[0]

    facts = run_awq(opts, source, make_target, store, on_block)
    linears = [n for n in store.parts if not n.endswith("_norm.weight")]
    facts.update({"act_order": False, "calibrated_tensors": len(linears),
                  "round_to_nearest": holder[0].round_to_nearest if holder else {}})  # fmt: skip
    return facts
