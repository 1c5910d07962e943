"""A size target (`--target-size`, `--target-bpw`): each tensor's type chosen to minimise the predicted
divergence under the budget — pure decisions from measured costs (docs/recipes.md, "Size targets").

Inputs: the plan of the tensors with their fixed types (kept tensors, `--tensor-type` and the other type
options), the free tensors, each free tensor's measured cost under every candidate type (engine/costs.py:
the imatrix-weighted squared error of quantizing it, times its class's sensitivity), and the budget.
Output: one type per free tensor, the mixture's `general.file_type`, and a reason per tensor.

The choice is greedy on marginal cost reduction per byte along each tensor's lower convex hull of
(bytes, cost) points, then a fill pass that spends what is left on the best remaining upgrades. Only
types whose block divides the row are candidates, so the choice never needs llama-quantize's fallback.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantcli.errors import UsageError
from quantcli.gguf_constants import GGMLQuantizationType as T
from quantcli.plan.core import PURE_REASON, Overrides, Plan, TensorDecision
from quantcli.plan.ftypes import FTYPES, Ftype
from quantcli.plan.rules import Category, block_size, category_of
from quantcli.writers.gguf import pad, tensor_nbytes

# Stock types llama.cpp's CPU backend runs, smallest first. The IQ2/IQ3 types are left out (their
# quantizers need an imatrix for every tensor and llama-quantize refuses them without one), and so are the
# ternary and MXFP4 types (not general-purpose weights).
CANDIDATE_TYPES: tuple[T, ...] = (
    T.Q2_K, T.Q3_K, T.IQ4_XS, T.Q4_0, T.IQ4_NL, T.Q4_K, T.Q4_1, T.Q5_0, T.Q5_K, T.Q5_1, T.Q6_K, T.Q8_0,
    T.F16, T.F32,
)  # fmt: skip

# How much one unit of imatrix-weighted squared error in a tensor of this class moves the mean KL-divergence,
# relative to the others; classes not listed count 1. scripts/calibrate_target.py measures such factors with
# our runtime (one class at Q4_0, the rest F16, on the calibration text; docs/recipes.md has the figures),
# but on the off-grid SmolLM2 they made the choice worse at both sizes scored (docs/benchmarks.md: mean KLD
# 0.0810 vs 0.0601 at Q3_K_M's size, 0.0414 vs 0.0386 at Q4_K_M's), so none is applied: the plain
# imatrix-weighted error is the cost.
CLASS_SENSITIVITY: dict[Category, float] = {}

# The loader's guess of a file type from its most common tensor type (llama_model_loader), which is what
# general.file_type says for a mixture.
_FTYPE_OF_TYPE: dict[T, str] = {
    T.F32: "F32", T.F16: "F16", T.Q4_0: "Q4_0", T.Q4_1: "Q4_1", T.Q5_0: "Q5_0", T.Q5_1: "Q5_1", T.Q8_0: "Q8_0",
    T.Q2_K: "Q2_K", T.Q3_K: "Q3_K_M", T.Q4_K: "Q4_K_M", T.Q5_K: "Q5_K_M", T.Q6_K: "Q6_K", T.IQ4_NL: "IQ4_NL",
    T.IQ4_XS: "IQ4_XS",
}  # fmt: skip


@dataclass(frozen=True)
class SizeTarget:
    """`--target-size BYTES` (the whole file, never above) or `--target-bpw X` (tensor data bits per weight,
    as llama-quantize reports it)."""

    size: int | None = None
    bpw: float | None = None

    def __post_init__(self) -> None:
        if (self.size is None) == (self.bpw is None):
            raise UsageError("give --target-size or --target-bpw, not both")
        if self.bpw is not None and not (0 < self.bpw <= 32 and math.isfinite(self.bpw)):
            raise UsageError(f"--target-bpw {self.bpw}: expected bits per weight between 0 and 32")

    @property
    def label(self) -> str:
        """How default output names show the target: `95000000B`, `4.50bpw`."""
        return f"{self.size}B" if self.size is not None else f"{self.bpw:.2f}bpw"

    def describe(self) -> str:
        return f"--target-size {self.size}" if self.size is not None else f"--target-bpw {self.bpw}"


def candidate_types(ne: Sequence[int]) -> list[T]:
    """The candidates a tensor of shape `ne` can take without a fallback (the block divides the row)."""
    return [t for t in CANDIDATE_TYPES if ne[0] % block_size(t) == 0]


def sensitivity(name: str) -> float:
    return CLASS_SENSITIVITY.get(category_of(name), 1.0)


def free_decisions(base: Plan) -> list[TensorDecision]:
    """The tensors the target decides: quantizable and not fixed by a type option. `base` is planned with
    --pure, so every tensor no option names carries PURE_REASON."""
    return [d for d in base.decisions if d.reason == PURE_REASON]


@dataclass(frozen=True)
class Budget:
    """What the free tensors may use: bytes, each tensor padded to the alignment for a file size, unpadded
    for bits per weight."""

    free_bytes: int
    padded: bool


def _size_of(d: TensorDecision, qtype: T, padded: bool) -> int:
    n = tensor_nbytes(qtype, d.ne)
    return pad(n, 32) if padded else n


def make_budget(base: Plan, overhead: int, target: SizeTarget) -> Budget:
    """The bytes the free tensors may take; refuses (exit 2) a budget below the smallest file or above the
    all-F32 one — before any weight is read. `overhead` is the header + KV + tensor infos, padded."""
    free = free_decisions(base)
    if not free:
        raise UsageError(f"{target.describe()}: no tensor is left for the target to choose (all fixed or kept)")
    free_names = {d.name for d in free}
    fixed = [d for d in base.decisions if d.name not in free_names]
    padded = target.size is not None
    fixed_bytes = sum(_size_of(d, d.type, padded) for d in fixed)
    low = sum(_size_of(d, candidate_types(d.ne)[0], padded) for d in free)
    high = sum(_size_of(d, T.F32, padded) for d in free)
    if target.size is not None:
        smallest, largest = overhead + fixed_bytes + low, overhead + fixed_bytes + high
        if not smallest <= target.size <= largest:
            raise UsageError(
                f"--target-size {target.size}: this model's files range from {smallest:,} bytes (smallest "
                f"types) to {largest:,} (F32)"
            )
        return Budget(target.size - overhead - fixed_bytes, True)
    assert target.bpw is not None
    n = base.n_elements
    total = math.floor(target.bpw * n / 8)
    lo_bpw, hi_bpw = (fixed_bytes + low) * 8 / n, (fixed_bytes + high) * 8 / n
    if not fixed_bytes + low <= total <= fixed_bytes + high:
        raise UsageError(f"--target-bpw {target.bpw}: this model allows {lo_bpw:.4f} to {hi_bpw:.4f} bits per weight")
    return Budget(total - fixed_bytes, False)


@dataclass(frozen=True)
class Choice:
    type: T
    cost: float  # predicted divergence contribution (sensitivity x weighted squared error)
    reason: str


def allocate(sizes: Sequence[Sequence[int]], costs: Sequence[Sequence[float]], budget: int) -> list[int]:
    """Per item, the index of the option to take (options sorted by size, ascending) so that the sizes sum
    to at most `budget` and the costs are small: greedy on cost reduction per byte along each item's
    lower convex hull, then upgrades by the same ratio with what is left. Deterministic (ties by item)."""
    chosen = [0] * len(sizes)
    left = budget - sum(s[0] for s in sizes)
    if left < 0:
        raise ValueError("budget below the smallest choice")
    hulls = [_lower_hull(s, c) for s, c in zip(sizes, costs, strict=True)]
    step = [0] * len(sizes)  # position on the hull
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        hull = hulls[i]
        if step[i] + 1 < len(hull):
            a, b = hull[step[i]], hull[step[i] + 1]
            gain = (costs[i][a] - costs[i][b]) / (sizes[i][b] - sizes[i][a])
            heapq.heappush(heap, (-gain, i))

    for i in range(len(sizes)):
        push(i)
    while heap:
        _, i = heapq.heappop(heap)
        a, b = hulls[i][step[i]], hulls[i][step[i] + 1]
        extra = sizes[i][b] - sizes[i][a]
        if extra > left:
            continue  # this tensor stays; later, smaller steps of others may still fit
        left -= extra
        step[i] += 1
        chosen[i] = b
        push(i)
    while True:  # fill: any upgrade (off the hull too) that still fits, best gain per byte first
        best: tuple[float, int, int] | None = None
        for i, (s, c) in enumerate(zip(sizes, costs, strict=True)):
            for k in range(len(s)):
                extra = s[k] - s[chosen[i]]
                if 0 < extra <= left and c[k] < c[chosen[i]]:
                    gain = (c[chosen[i]] - c[k]) / extra
                    if best is None or gain > best[0]:
                        best = (gain, i, k)
        if best is None:
            return chosen
        _, i, k = best
        left -= sizes[i][k] - sizes[i][chosen[i]]
        chosen[i] = k


def _lower_hull(sizes: Sequence[int], costs: Sequence[float]) -> list[int]:
    """Indices of the lower convex hull of (size, cost), from the smallest size, each cheaper than the last."""
    hull = [0]
    for k in range(1, len(sizes)):
        if costs[k] >= costs[hull[-1]] or sizes[k] == sizes[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> k
            if (costs[b] - costs[a]) * (sizes[k] - sizes[a]) >= (costs[k] - costs[a]) * (sizes[b] - sizes[a]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def choose_types(base: Plan, budget: Budget, costs: Mapping[str, Mapping[T, float]]) -> dict[str, Choice]:
    """The type of every free tensor, with its predicted cost and why."""
    free = free_decisions(base)
    options = [sorted(costs[d.name], key=lambda t: (_size_of(d, t, budget.padded), CANDIDATE_TYPES.index(t)))
               for d in free]  # fmt: skip
    sizes = [[_size_of(d, t, budget.padded) for t in opts] for d, opts in zip(free, options, strict=True)]
    cost_table = [[float(costs[d.name][t]) for t in opts] for d, opts in zip(free, options, strict=True)]
    picks = allocate(sizes, cost_table, budget.free_bytes)
    choices = {}
    for d, opts, k, c, sz in zip(free, options, picks, cost_table, sizes, strict=True):
        why = f"predicted cost {c[k]:.3g}"
        upgrades = [j for j in range(len(opts)) if sz[j] > sz[k] and c[j] < c[k]]
        if upgrades:  # the cheapest next step the budget did not pay for
            j = max(upgrades, key=lambda j: ((c[k] - c[j]) / (sz[j] - sz[k]), -j))
            why += f"; next {opts[j].name}: -{c[k] - c[j]:.3g} for +{sz[j] - sz[k]:,} bytes"
        choices[d.name] = Choice(opts[k], c[k], why)
    return choices


def mixture_ftype(types: Sequence[T]) -> Ftype:
    """general.file_type for a mixture: the recipe llama.cpp's loader guesses from the most common
    quantized type (ties: the first in CANDIDATE_TYPES order)."""
    counts = {t: types.count(t) for t in CANDIDATE_TYPES if t in types}
    if not counts:
        return FTYPES["Q8_0"]
    top = max(counts.values())
    most = next(t for t in CANDIDATE_TYPES if counts.get(t) == top and t in _FTYPE_OF_TYPE)
    if most in (T.F32, T.F16):  # a float "recipe" would skip the per-tensor types: name the best quantized one
        quantized = [t for t in counts if t not in (T.F32, T.F16)]
        return FTYPES[_FTYPE_OF_TYPE[quantized[-1]]] if quantized else FTYPES["Q8_0"]
    return FTYPES[_FTYPE_OF_TYPE[most]]


def targeted_overrides(overrides: Overrides, choices: Mapping[str, Choice]) -> Overrides:
    """The user's overrides with one exact-name `--tensor-type` per chosen tensor appended (the user's own
    patterns come first and name only fixed tensors, so first-match-wins keeps them)."""
    exact = [(f"^{re.escape(name)}$", c.type) for name, c in choices.items()]
    return Overrides(
        pure=False,
        output_tensor_type=overrides.output_tensor_type,
        token_embedding_type=overrides.token_embedding_type,
        tensor_types=[*overrides.tensor_types, *exact],
        leave_output_tensor=overrides.leave_output_tensor,
        has_imatrix=overrides.has_imatrix,
        kv_overrides=list(overrides.kv_overrides),
    )


def explained(plan: Plan, choices: Mapping[str, Choice], target: SizeTarget) -> Plan:
    """`plan` with each chosen tensor's reason saying it was the target's choice."""
    decisions = []
    for d in plan.decisions:
        c = choices.get(d.name)
        if c is not None:
            assert d.type == c.type and not d.fell_back, d
            d = TensorDecision(d.name, d.ne, d.src_type, d.type, f"{target.describe()}: {c.reason}", False, None,
                               d.requires_imatrix)  # fmt: skip
        decisions.append(d)
    return Plan(plan.recipe, plan.model, decisions, plan.overrides, plan.alignment)
