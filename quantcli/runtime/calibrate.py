"""Layer-sequential calibration: the runtime runs the source model one decoder block at a time over the
calibration samples, hands each block's input statistics to a quantizer, and feeds the *quantized* block's
output to the next block (as GPTQ and llm-compressor's sequential pipeline do).

Memory holds the activations of the samples (S·T rows of n_embd), one block's float32 weights and that
block's statistics, never the whole model's. The forward pass is plain float32 (`emulate_ggml=False`):
calibration needs the model's values, not llama.cpp's activation rounding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantcli.errors import InputInvalid, InputMissing
from quantcli.quants.gptq import Hessian
from quantcli.runtime.memory import activation_memory
from quantcli.runtime.model import Model
from quantcli.runtime.tokenizer import Tokenizer

DEFAULT_CALIB_TEXT = Path(__file__).resolve().parent.parent / "data" / "calib.txt"
DEFAULT_SAMPLES = 64
DEFAULT_SEQ_LEN = 512


@dataclass(frozen=True)
class CalibrationText:
    text: str
    sources: tuple[str, ...]  # as recorded in outputs
    sha256: str


def read_calibration_text(paths: Sequence[Path | str]) -> CalibrationText:
    """The calibration text of `--calib` files (plain UTF-8 text, or JSONL whose records have a `text`
    field), documents joined by a blank line; the bundled text (docs/calibration.md) when none is given."""
    files = [Path(p) for p in paths] or [DEFAULT_CALIB_TEXT]
    parts: list[str] = []
    for path in files:
        if not path.is_file():
            raise InputMissing(f"--calib {path} does not exist")
        try:
            raw = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputInvalid(f"--calib {path}: not UTF-8 text (byte {exc.start})") from None
        parts.extend(_jsonl_texts(raw, path) if path.suffix == ".jsonl" else [raw])
    text = "\n\n".join(parts)
    if not text.strip():
        raise InputInvalid(f"--calib {', '.join(map(str, files))}: no text")
    sources = tuple(map(str, paths)) if paths else ("quantcli/data/calib.txt",)
    return CalibrationText(text, sources, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _jsonl_texts(raw: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputInvalid(f"--calib {path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputInvalid(f"--calib {path}:{number}: a JSONL record needs a string \"text\" field")
        texts.append(record["text"])
    if not texts:
        raise InputInvalid(f"--calib {path}: no records")
    return texts


def calibration_samples(tokenizer: Tokenizer, text: str, samples: int, seq_len: int) -> np.ndarray:
    """(S, seq_len) token ids: the first `samples` consecutive windows of the tokenized text, each
    starting with BOS when the vocabulary adds one — llama-imatrix's chunks of the same text, so an imatrix
    made from it by llama-imatrix sees the same tokens. Fewer windows when the text is shorter."""
    if samples < 1 or seq_len < 8:
        raise InputInvalid(f"--calib-samples must be >= 1 and --calib-seq-len >= 8 (got {samples}, {seq_len})")
    tokens = np.asarray(tokenizer.encode(text, add_special=True), dtype=np.int64)
    available = tokens.size // seq_len
    if available < 1:
        raise InputInvalid(
            f"the calibration text tokenizes to {tokens.size} tokens, less than one sample of --calib-seq-len "
            f"{seq_len}"
        )
    n = min(samples, available)
    out = tokens[: n * seq_len].reshape(n, seq_len).copy()
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        out[:, 0] = tokenizer.bos_id
    return out


@dataclass
class ExpertInputs:
    """The inputs of one stacked expert tensor (ffn_{gate,up,down}_exps) in one block run, as the MoE
    forward hands them to an observer (runtime/moe.py): `rows` (n_tok, 1 or n_used, ne0) — the token's
    normed hidden state for gate/up, each slot's own activation for down — and `selected` (n_tok, n_used),
    the expert of each (token, slot). Expert e's Hessian is built on demand from the rows routed to it, so a
    block holds one expert's Hessian at a time, not n_expert of them."""

    rows: np.ndarray
    selected: np.ndarray
    n_expert: int

    def tokens(self) -> np.ndarray:
        """(n_expert,) int64: the tokens routed to each expert (a token uses an expert in at most one slot),
        what llama-imatrix counts for the expert."""
        return np.bincount(self.selected.reshape(-1), minlength=self.n_expert).astype(np.int64)

    def hessian(self, expert: int, name: str) -> Hessian:
        """Running mean of 2·XᵀX over the rows routed to `expert` (Gram product in float32 as for a dense
        linear, accumulated in float64); a zero matrix with count 0 for an expert no token used."""
        tok, slot = np.nonzero(self.selected == expert)
        x = self.rows[tok, slot % self.rows.shape[1]]
        h = Hessian(self.rows.shape[-1])
        gram = x.T @ x
        if not np.isfinite(gram).all():
            raise InputInvalid(f"calibration: non-finite activations at the input of {name}, expert {expert}")
        h.add_gram(gram, x.shape[0])
        return h


@dataclass
class BlockInputs:
    """What a block's quantizer gets: the Hessian of each linear's input (GGUF weight name -> running mean of
    2·XᵀX, float64), shared between linears that read the same rows (q/k/v, gate/up), and the block's input
    rows with a way to run the block on other weights (AWQ's loss). With `keep_rows` (AWQ) also each
    linear's input rows of the first sequences and the per-channel mean |x| over every token."""

    layer: int
    hessians: dict[str, Hessian]
    x: np.ndarray  # (S*T, n_embd) input rows of the block, float32; do not modify
    # (weights by GGUF name, sequences: the first n samples only, None = all) -> the block's output rows
    run: Callable[..., np.ndarray]
    tokens: int = 0
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # linear -> its first `keep_rows` input rows
    abs_mean: dict[str, np.ndarray] = field(default_factory=dict)  # linear -> mean |x| per input channel
    experts: dict[str, ExpertInputs] = field(default_factory=dict)  # stacked expert tensor -> its inputs


@dataclass
class _HessianObserver:
    """Collects 2·XᵀX of every `blk.*` matmul input, one Gram matrix per distinct input array (q/k/v see
    the same rows). The Gram product runs in float32 (BLAS sgemm, as llm-compressor's torch does it) and is
    accumulated in float64."""

    hessians: dict[str, Hessian] = field(default_factory=dict)
    n_expert: int = 0
    experts: dict[str, ExpertInputs] = field(default_factory=dict)
    keep_rows: int = 0  # also keep this many leading input rows and the mean |x| of each linear (AWQ)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    abs_mean: dict[str, np.ndarray] = field(default_factory=dict)
    # The rows of the last call and their Hessian, held (not their id, which a freed array passes on).
    _last: tuple[np.ndarray, Hessian] | None = None
    _last_name: str = ""

    def __call__(self, name: str, rows: np.ndarray, experts: np.ndarray | None = None) -> None:
        if not name.startswith("blk."):
            return
        if experts is not None:  # a stacked expert tensor: its inputs are kept, Hessians made per expert
            self.experts[name] = ExpertInputs(rows, experts, self.n_expert)
            return
        if self._last is not None and self._last[0] is rows:
            self.hessians[name] = self._last[1]
            if self.keep_rows:
                self.rows[name], self.abs_mean[name] = self.rows[self._last_name], self.abs_mean[self._last_name]
            return
        if self.keep_rows:
            flat_rows = rows.reshape(-1, rows.shape[-1])
            self.rows[name] = flat_rows[: self.keep_rows].copy()
            self.abs_mean[name] = np.abs(flat_rows).mean(axis=0, dtype=np.float32)
        h = Hessian(rows.shape[-1])
        flat = rows.reshape(-1, rows.shape[-1])
        gram = flat.T @ flat
        if not np.isfinite(gram).all():
            raise InputInvalid(f"calibration: non-finite activations at the input of {name}")
        h.add_gram(gram, flat.shape[0])
        self.hessians[name] = h
        self._last = (rows, h)
        self._last_name = name


QuantizeBlock = Callable[[BlockInputs], dict[str, np.ndarray]]


def calibrate_blocks(
    model: Model,
    samples: np.ndarray,
    quantize_block: QuantizeBlock,
    *,
    on_block: Callable[[int, int], None] | None = None,
    replay: Callable[[int], dict[str, np.ndarray] | None] | None = None,
    keep_sequences: int = 0,
) -> None:
    """Run every block over `samples` (S, T); `quantize_block` returns the block's quantized weights (float32,
    GGUF names and orientation: the values the output file will hold), which then produce the next block's
    input. `replay(layer)` may return a block's already-quantized weights (a resumed run): the block is then
    only run forward with them. `on_block(done, total)` reports progress. `keep_sequences` (AWQ): the
    block's quantizer also gets every linear's input rows of the first that many samples.

    A mixture-of-experts block's quantized weights hold each stacked expert tensor whole, (n_expert, rows,
    cols); the block's source stacks are read once (float32, one block's) for the runs before that."""
    with activation_memory():
        _calibrate_blocks(model, samples, quantize_block, on_block, replay, keep_sequences)


def _calibrate_blocks(
    model: Model,
    samples: np.ndarray,
    quantize_block: QuantizeBlock,
    on_block: Callable[[int, int], None] | None,
    replay: Callable[[int], dict[str, np.ndarray] | None] | None,
    keep_sequences: int,
) -> None:
    n_seq = samples.shape[0]
    x = model.embed_sequences(samples)
    scratch = np.empty_like(x)  # the statistics pass's copy of each block's input, one buffer for all blocks
    n_layer = model.config.n_layer
    for il in range(n_layer):
        source_stacks: dict[str, np.ndarray] = {}
        quantized = replay(il) if replay is not None else None
        if quantized is None:
            observer = _HessianObserver(
                n_expert=model.config.n_expert, keep_rows=min(keep_sequences, n_seq) * (x.shape[0] // n_seq)
            )
            # Only the observer's statistics are wanted: the block's output comes from the quantized run below.
            np.copyto(scratch, x)
            probe = model.sequence_layer(il, scratch, n_seq, observer=observer, inputs_only=True,
                                         expert=_experts(model, {}, source_stacks))  # fmt: skip
            del probe
            source_stacks.clear()  # the quantizer reads its own copy, a stack at a time (reloaded if run)

            def run(
                weights: dict[str, np.ndarray], sequences: int | None = None, il: int = il, x: np.ndarray = x,
                source_stacks: dict[str, np.ndarray] = source_stacks,
            ) -> np.ndarray:
                n = n_seq if sequences is None else min(sequences, n_seq)
                rows = x[: n * (x.shape[0] // n_seq)].copy()
                return model.sequence_layer(il, rows, n, weight=_with(model, weights),
                                            expert=_experts(model, weights, source_stacks))  # fmt: skip

            quantized = quantize_block(
                BlockInputs(il, observer.hessians, x, run, x.shape[0], observer.rows, observer.abs_mean,
                            observer.experts)  # fmt: skip
            )
            del observer
        if il + 1 < n_layer:  # the last block's output would feed nothing
            x = model.sequence_layer(il, x, n_seq, weight=_with(model, quantized),
                                     expert=_experts(model, quantized, source_stacks))  # fmt: skip
        if on_block is not None:
            on_block(il + 1, n_layer)


def _with(model: Model, weights: dict[str, np.ndarray]) -> Callable[[str], np.ndarray]:
    def weight(name: str) -> np.ndarray:
        w = weights.get(name)
        return w if w is not None else model.transient_weight(name)

    return weight


def _experts(
    model: Model, weights: dict[str, np.ndarray], source_stacks: dict[str, np.ndarray]
) -> Callable[[str, int], np.ndarray]:
    """Expert e of a stacked tensor: from `weights` (the quantized block) if there, else from the source
    stack, read whole once per block into `source_stacks` (an HF source produces the whole stack for any
    one expert, so reading per expert would read it n_expert times)."""

    def expert(name: str, e: int) -> np.ndarray:
        stack = weights.get(name)
        if stack is None:
            stack = source_stacks.get(name)
            if stack is None:
                stack = source_stacks[name] = model.transient_weight(name)
        return stack[e]

    return expert
