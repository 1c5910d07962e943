"""What each candidate type would cost a tensor, measured by quantizing it: the inputs of a size target's
choice (plan/target.py).

A tensor's cost under a type is the squared error of its dequantized weights, each column weighted by the
imatrix's mean x² for that input (so the sum approximates E‖ΔW·x‖², the error of the layer's output), times
its class's sensitivity (plan.target.CLASS_SENSITIVITY). The quantizer runs with the imatrix exactly as the
output will be written. Without an imatrix every column weighs 1.

Rows are quantized independently by every GGML type, so a deterministic, evenly spaced sample of at most
`SAMPLE_ROWS` rows per tensor measures the same per-row errors as the whole tensor; the sum is scaled to
the full row count. That keeps measuring a 135M model to seconds and an 8B one to minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from quantcli import quants
from quantcli.engine.stream import TensorBytes, source_rows
from quantcli.gguf_constants import GGMLQuantizationType
from quantcli.plan.core import TensorDecision
from quantcli.plan.metadata import ImatrixUse
from quantcli.plan.target import CLASS_SENSITIVITY, candidate_types, sensitivity

SAMPLE_ROWS = 1024

Costs = dict[str, dict[GGMLQuantizationType, float]]

# Costs already measured in this process, by what decides them (see costs_key): `sweep` plans several
# targets from one source and one imatrix and measures once.
_MEASURED: dict[tuple, Costs] = {}


def costs_key(files: Sequence[Path], decisions: Sequence[TensorDecision]) -> tuple:
    """What the costs depend on: the input files (path, size, mtime), the tensors and the sensitivity table."""
    stamps = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    tensors = tuple((d.name, d.ne, d.src_type) for d in decisions)
    return stamps, tensors, tuple(sorted((c.value, f) for c, f in CLASS_SENSITIVITY.items()))


def measure_costs_once(key: tuple, measure: Callable[[], Costs]) -> Costs:
    if key not in _MEASURED:
        _MEASURED[key] = measure()
    return _MEASURED[key]


def sample_rows(n_rows: int, limit: int = SAMPLE_ROWS) -> np.ndarray:
    """Evenly spaced row indices, first and last included, at most `limit`."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, limit).round().astype(np.int64))


def measure_costs(
    src: TensorBytes,
    decisions: Sequence[TensorDecision],
    imatrix: ImatrixUse | None,
    threads: int | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> Costs:
    """Every decision's cost under each of its candidate types (plan.target.candidate_types)."""
    costs: Costs = {}
    for d in decisions:
        ncols = d.ne[0]
        n_rows = math.prod(d.ne[1:])
        raw = src.tensor_bytes(d.name)
        picked = sample_rows(n_rows)
        rows = np.asarray(source_rows(raw, d.src_type, n_rows, ncols)[picked], dtype=np.float32)
        src.release(d.name)
        weights = imatrix.imatrix.weights_for(d.name, d.ne) if imatrix is not None else None
        column_weights = _column_weights(weights, picked, d.ne)
        scale = sensitivity(d.name) * n_rows / picked.size
        costs[d.name] = {}
        for qtype in candidate_types(d.ne):
            costs[d.name][qtype] = scale * _weighted_error(rows, qtype, weights, column_weights, d, picked, threads)
        if on_tensor is not None:
            on_tensor(d.name)
    return costs


def _column_weights(weights: np.ndarray | None, picked: np.ndarray, ne: tuple[int, ...]) -> np.ndarray | None:
    """Per sampled row, the imatrix weights of its columns (one row per expert for a 3-D tensor's slice)."""
    if weights is None:
        return None
    ncols = ne[0]
    if weights.size == ncols:
        return weights.astype(np.float32)[None, :]
    rows_per_expert = ne[1]
    return weights.astype(np.float32).reshape(-1, ncols)[picked // rows_per_expert]


def _weighted_error(
    rows: np.ndarray,
    qtype: GGMLQuantizationType,
    weights: np.ndarray | None,
    column_weights: np.ndarray | None,
    d: TensorDecision,
    picked: np.ndarray,
    threads: int | None,
) -> float:
    if column_weights is not None and column_weights.shape[0] > 1:  # per-expert imatrix: quantize by expert
        back = np.empty_like(rows)
        for expert in np.unique(picked // d.ne[1]):
            mask = picked // d.ne[1] == expert
            encoded = quants.quantize(rows[mask], qtype, column_weights[mask][0], name=d.name, threads=threads)
            back[mask] = quants.dequantize(encoded, qtype, (int(mask.sum()), d.ne[0]))
    else:
        encoded = quants.quantize(rows, qtype, weights, name=d.name, threads=threads)
        back = quants.dequantize(encoded, qtype, rows.shape)
    error = np.square(back - rows, dtype=np.float64)
    if column_weights is not None:
        error *= column_weights
    return float(error.sum())
