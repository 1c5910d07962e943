"""Importance matrix collected by the runtime, written in llama-imatrix's GGUF format (formats/imatrix.md).

As tools/imatrix/imatrix.cpp: for every matmul whose weight is a `blk.*` tensor (plus `output.weight`
with process_output) and whose batch has at least 16 token rows, add each input row's squares to
`values` and the row count to the entry's single count. A stacked expert tensor (MUL_MAT_ID, collected
whatever the batch size) has one slice of `values` and one count per expert: each (token, slot) routed
to expert e adds its row's squares to slice e and 1 to count e. The driver evaluates every token of each n_ctx
chunk (KV cache cleared per chunk, first token replaced by BOS when the vocab adds one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantcli.errors import InputInvalid
from quantcli.runtime.evaluate import ChunkPlan
from quantcli.runtime.metrics import NllTotals, nll_rows
from quantcli.runtime.model import Model

MIN_ROWS = 16  # collect_imatrix ignores batches of fewer token rows


class ImatrixCollector:
    def __init__(self, process_output: bool = False, n_expert: int = 0) -> None:
        self.process_output = process_output
        self.n_expert = n_expert  # the model's experts per layer: every stacked tensor's entry has as many
        self.sums: dict[str, np.ndarray] = {}  # float64 (n_matrices, ne0) running sums of squares
        self.counts: dict[str, np.ndarray] = {}  # int64 (n_matrices,)

    def __call__(self, name: str, rows: np.ndarray, experts: np.ndarray | None = None) -> None:
        if experts is not None:
            self._add_experts(name, rows, experts)
            return
        if rows.shape[0] < MIN_ROWS:
            return
        if not (name.startswith("blk.") or (self.process_output and name == "output.weight")):
            return
        sums, counts = self._entry(name, 1, rows.shape[-1])
        sums[0] += np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        counts[0] += rows.shape[0]
        if not np.isfinite(sums).all():
            raise InputInvalid(f"non-finite activations in {name}")

    def _add_experts(self, name: str, rows: np.ndarray, experts: np.ndarray) -> None:
        """rows (n_tok, 1 or n_used, ne0): slot i of a token reads rows[:, i % rows.shape[1]] (imatrix.cpp's
        i11 = idx % src1->ne[1]); experts (n_tok, n_used) holds expert ids < the tensor's expert count."""
        sums, counts = self._entry(name, self.n_expert, rows.shape[-1])
        for slot in range(experts.shape[1]):
            x = rows[:, slot % rows.shape[1]]
            for expert in np.unique(experts[:, slot]):
                mine = x[experts[:, slot] == expert]
                sums[expert] += np.einsum("ij,ij->j", mine, mine, dtype=np.float64)
                counts[expert] += mine.shape[0]
        if not np.isfinite(sums).all():
            raise InputInvalid(f"non-finite activations in {name}")

    def _entry(self, name: str, n_matrices: int, ne0: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_matrices, ne0), np.float64)
            self.counts[name] = np.zeros(n_matrices, np.int64)
        elif self.sums[name].shape[1] != ne0:
            raise InputInvalid(f"inconsistent activation size for {name}")
        return self.sums[name], self.counts[name]

    def per_column_means(self) -> dict[str, np.ndarray]:
        """What llama-quantize derives from the file: in_sum2 / count per column and matrix (float32, flat;
        1 for a matrix that was never used)."""
        out = {}
        for n, sums in self.sums.items():
            counts = self.counts[n].astype(np.float32)[:, None]
            safe = np.where(counts > 0, counts, np.float32(1))
            out[n] = np.where(counts > 0, sums.astype(np.float32) / safe, np.float32(1)).reshape(-1)
        return out

    def write_gguf(self, path: Path, datasets: list[str], chunk_count: int, chunk_size: int) -> None:
        from gguf import GGUFWriter

        writer = GGUFWriter(str(path), arch="imatrix")
        # llama-imatrix's files carry no general.architecture; drop the key GGUFWriter adds itself.
        writer.kv_data[0].pop("general.architecture", None)
        writer.add_string("general.type", "imatrix")
        writer.add_array("imatrix.datasets", list(datasets))
        writer.add_uint32("imatrix.chunk_count", int(chunk_count))
        writer.add_uint32("imatrix.chunk_size", int(chunk_size))
        for name in sorted(self.sums):
            writer.add_tensor(f"{name}.in_sum2", self.sums[name].astype(np.float32))
            writer.add_tensor(f"{name}.counts", self.counts[name].astype(np.float32).reshape(-1, 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def collect(
    model: Model,
    plan: ChunkPlan,
    process_output: bool = False,
    progress: Callable[[int, int, dict], None] | None = None,
) -> tuple[ImatrixCollector, dict]:
    """Run every chunk with the collector attached; also report the PPL llama-imatrix prints."""
    collector = ImatrixCollector(process_output, model.config.n_expert)
    totals = NllTotals()
    for i in range(plan.n_chunks):
        cache = model.new_cache(plan.n_ctx)
        # llama-imatrix requests logits for every position, so output.weight sees all n_ctx rows
        rows = np.arange(plan.n_ctx) if process_output else np.arange(plan.first, plan.n_ctx - 1)
        logits = model.forward(plan.chunk_input(i), cache, output_rows=rows, observer=collector)
        if process_output:
            logits = logits[plan.first : plan.n_ctx - 1]
        totals.add(nll_rows(logits, plan.targets(i)))
        if progress:
            progress(i + 1, plan.n_chunks, {"ppl": totals.running_ppl()})
    ppl, unc = totals.summary()
    return collector, {"ppl": ppl, "ppl_uncertainty": unc, "chunks": plan.n_chunks, "n_ctx": plan.n_ctx}
