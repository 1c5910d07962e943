"""AWQ (Lin et al.): activation-aware per-channel scales for the linears a norm or linear feeds, searched on
calibration activations, then folded into the weights so that no extra tensor is stored.

The search is mlx-lm's (`mlx_lm/quant/awq.py`, 0.32): per input channel the mean |x| over the calibration
tokens, for ratio r in 0, 1/n, ..., (n-1)/n the scales `s = max(mean|x|^r, 1e-4)`, normalised by
`sqrt(max(s) · min(s))`; each linear's weight becomes `Q(W · s) / s` (Q: the target's fake quantizer) and
the loss is the mean squared difference between the block's output with these weights and with the float
ones; the lowest loss wins (the first on a tie, so r = 0 — no scaling — unless a ratio is strictly better).
Optional weight clipping is mlx-lm's `search_best_clip`. docs/calibration.md ("AWQ") gives the choices
and the agreement with mlx-lm. Everything is float32 NumPy, as mlx-lm computes a float32 model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from quantcli.quants.packed.base import PackedFormat, Scheme

# (out, in) float32 -> the same weight quantized and dequantized by the target format (its fake quantizer).
QuantizeDequantize = Callable[[np.ndarray], np.ndarray]
# (inputs (tokens, in), the scaling group's weights in group order) -> the block's output on those inputs.
BlockForward = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]

MIN_SCALE = 1e-4  # mlx-lm's floor on mean|x|^r, so a dead channel cannot give a zero scale
# Linears whose clip search mlx-lm skips: their outputs go through q·k products, where a clipped outlier
# costs more than the per-linear loss measures.
NO_CLIP = ("q_proj", "k_proj")


@dataclass(frozen=True)
class ScalingGroup:
    """A module whose output feeds `linears`: its output channels get 1/s, the linears' input columns s.

    Names are relative to the decoder layer (HF Llama naming). `block` is the module whose output the loss
    compares ("self_attn", "mlp"); None compares the linears' own outputs (the only choice when one linear
    is scaled against the one before it)."""

    prev: str
    linears: tuple[str, ...]
    block: str | None


def llama_scaling_groups(num_heads: int, num_kv_heads: int) -> tuple[ScalingGroup, ...]:
    """The groups of a Llama-style decoder layer, in the order they are searched and folded.

    mlx-lm's `llama_awq` order (q/k/v, then up -> down before gate/up, so gate/up is searched on the
    already rescaled up_proj), plus llm-compressor's v_proj -> o_proj when v's output is o's input (no
    grouped-query attention; with GQA their widths differ and llm-compressor skips the group too)."""
    groups = [ScalingGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn")]
    if num_heads == num_kv_heads:
        groups.append(ScalingGroup("self_attn.v_proj", ("self_attn.o_proj",), None))
    groups.append(ScalingGroup("mlp.up_proj", ("mlp.down_proj",), None))
    groups.append(ScalingGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"))
    return tuple(groups)


@dataclass(frozen=True)
class AWQSearch:
    scales: np.ndarray  # float32 (in,): multiply the linears' input columns, divide the previous op's output
    ratio: float  # the chosen exponent
    loss: float  # its loss (mean squared error of the block output)
    losses: tuple[float, ...]  # the loss of every ratio of the grid, in grid order


def packed_fake_quantizer(fmt: type[PackedFormat], scheme: Scheme) -> QuantizeDequantize:
    """A packed format's RTN quantizer as the search's fake quantizer: the weight exactly as the format's
    client will read it back (`--format awq`: AutoAWQ's zero-point grid, float16 scales)."""

    def quantize_dequantize(weight: np.ndarray) -> np.ndarray:
        return fmt.dequantize(fmt.quantize(weight, scheme), scheme)

    return quantize_dequantize


def ggml_fake_quantizer(qtype: str) -> QuantizeDequantize:
    """A GGML type's quantizer (the bytes llama-quantize writes, without an imatrix) as the search's fake
    quantizer: rows are the weight's output rows, as in the GGUF. The search runs without an imatrix
    because each trial's weight `W·s` sees other inputs (`x/s`); when the folded weight is finally quantized
    with one, its imatrix is the inputs' mean square over s², `imatrix / s**2`."""
    from quantcli.quants.base import dequantize, quantize

    def quantize_dequantize(weight: np.ndarray) -> np.ndarray:
        return dequantize(quantize(weight, qtype, name="AWQ trial"), qtype, weight.shape)

    return quantize_dequantize


def activation_mean(x: np.ndarray) -> np.ndarray:
    """The AWQ statistic: mean |x| per input channel over every leading index (tokens), float32 (in,)."""
    x = np.asarray(x, dtype=np.float32)
    return np.abs(x).reshape(-1, x.shape[-1]).mean(axis=0, dtype=np.float32)


def ratio_scales(x_mean: np.ndarray, ratio: float) -> np.ndarray:
    """mlx-lm's scales for one ratio: max(mean|x|^ratio, 1e-4), divided by sqrt(max · min) so that the
    largest and smallest are reciprocal."""
    scales = np.maximum(np.asarray(x_mean, dtype=np.float32) ** np.float32(ratio), np.float32(MIN_SCALE))
    return (scales / np.sqrt(scales.max() * scales.min())).astype(np.float32)


def linear_outputs(x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
    """The default block: each linear's output on x, side by side."""
    return np.concatenate([x @ w.T for w in weights], axis=-1)


def awq_search(
    x: np.ndarray,
    weights: Sequence[np.ndarray],
    quantize_dequantize: QuantizeDequantize | Sequence[QuantizeDequantize],
    forward: BlockForward | None = None,
    n_grid: int = 20,
    x_mean: np.ndarray | None = None,
) -> AWQSearch:
    """The best scales for one scaling group.

    x: the linears' input on the calibration tokens, float32 (..., in) (also the block's input: the group's
    `prev` output); weights: the linears' float weights (out_i, in); forward: the block's output for x and
    the group's weights (default: the linears' own outputs); x_mean: the statistic when it was accumulated
    elsewhere (default: `activation_mean(x)`). `quantize_dequantize` may be one per weight (a GGUF recipe
    gives q/k/v different types)."""
    if n_grid < 1:
        raise ValueError(f"AWQ n_grid must be positive, not {n_grid}")
    x = np.asarray(x, dtype=np.float32)
    weights = [np.asarray(w, dtype=np.float32) for w in weights]
    n = x.shape[-1]
    if not weights or any(w.ndim != 2 or w.shape[1] != n for w in weights):
        raise ValueError(f"AWQ weights must be (out, {n}) matrices, got {[w.shape for w in weights]}")
    run = forward or linear_outputs
    quantizers = [quantize_dequantize] * len(weights) if callable(quantize_dequantize) else list(quantize_dequantize)
    if len(quantizers) != len(weights):
        raise ValueError(f"AWQ needs one quantizer per weight ({len(weights)}), got {len(quantizers)}")
    stat = activation_mean(x) if x_mean is None else np.asarray(x_mean, dtype=np.float32)
    if stat.shape != (n,):
        raise ValueError(f"AWQ statistic has shape {stat.shape}, expected ({n},)")
    reference = run(x, weights)
    best: tuple[float, float, np.ndarray] | None = None
    losses = []
    for step in range(n_grid):
        ratio = step / n_grid
        scales = ratio_scales(stat, ratio)
        trial = [q(w * scales) / scales for q, w in zip(quantizers, weights, strict=True)]
        diff = (reference - run(x, trial)).astype(np.float32)
        loss = float(np.sum(diff * diff, dtype=np.float32) / np.float32(diff.size))
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, ratio, scales)
    assert best is not None
    return AWQSearch(best[2], best[1], best[0], tuple(losses))


def clip_search(
    x: np.ndarray,
    weight: np.ndarray,
    quantize_dequantize: QuantizeDequantize,
    group_size: int,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_frames: int = 512,
    row_batch: int = 64,
) -> np.ndarray:
    """mlx-lm's `search_best_clip` on one (already scaled) weight: per output row and input group, the
    clip |w| <= p · max|w| (p = 1, 1 - 1/n, ... down to 1 - max_shrink, exclusive) whose quantized partial
    products on the calibration inputs (every ceil(tokens / n_frames)-th token) are closest to the float
    ones. Returns the clipped float weight; quantize it with the target format afterwards."""
    weight = np.asarray(weight, dtype=np.float32)
    out, n = weight.shape
    if n % group_size:
        raise ValueError(f"group_size {group_size} does not divide {n} input columns")
    x = np.asarray(x, dtype=np.float32).reshape(-1, n)
    stride = -(-x.shape[0] // n_frames)
    xg = x[::stride].reshape(-1, n // group_size, group_size)
    clipped = np.empty_like(weight)
    for start in range(0, out, row_batch):
        w = weight[start : start + row_batch]
        wg = w.reshape(w.shape[0], -1, group_size)
        reference = np.einsum("bdg,odg->bod", xg, wg)
        init_max = np.abs(wg).max(axis=-1, keepdims=True)
        best_error = np.full(wg.shape[:2], np.inf, dtype=np.float32)
        best_max = np.zeros_like(init_max)
        for i in range(int(max_shrink * n_grid)):
            w_max = np.float32(1 - i / n_grid) * init_max
            wq = quantize_dequantize(np.clip(wg, -w_max, w_max).reshape(w.shape)).reshape(wg.shape)
            diff = reference - np.einsum("bdg,odg->bod", xg, wq)
            loss = (diff * diff).sum(axis=0) / np.float32(xg.shape[0])
            better = loss < best_error
            best_error = np.where(better, loss, best_error)
            best_max = np.where(better[..., None], w_max, best_max)
        clipped[start : start + row_batch] = np.clip(wg, -best_max, best_max).reshape(w.shape)
    return clipped


def scale_columns(weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """A linear fed by the scaled op: its input columns times s (out, in) · (in,)."""
    return (np.asarray(weight, dtype=np.float32) * scales).astype(np.float32)


def fold_into_norm(norm_weight: np.ndarray, scales: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """The norm (or its bias) whose output feeds the scaled linears, divided by s.

    The effective multiplier is `offset + w`: 0 for Llama's RMSNorm; 1 for Gemma's HF `(1 + w)` norms,
    which gives mlx-lm's `(1 + w) / s - 1`. Folding into a GGUF tensor uses the stored form instead (the
    converter already wrote `1 + w` for Gemma), so offset 0 there."""
    w = np.asarray(norm_weight, dtype=np.float32)
    return ((np.float32(offset) + w) / scales - np.float32(offset)).astype(np.float32)


def fold_into_linear(prev_weight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The previous linear (out, in) whose output rows feed the scaled linear, divided by s per row (its
    bias, a (out,) vector, takes the same `/ s`)."""
    w = np.asarray(prev_weight, dtype=np.float32)
    return (w / (scales[:, None] if w.ndim == 2 else scales)).astype(np.float32)
