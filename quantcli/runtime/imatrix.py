"""Importance matrix collected by the runtime, written in llama-imatrix's GGUF format (formats/imatrix.md).

As tools/imatrix/imatrix.cpp: for every matmul whose weight is a `blk.*` tensor (plus `output.weight`
with process_output) and whose batch has at least 16 token rows, add each input row's squares to
`values` and the row count to the entry's single count. The driver evaluates every token of each n_ctx
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
    def __init__(self, process_output: bool = False) -> None:
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}  # float64 (ne0,) running sums of squares
        self.counts: dict[str, int] = {}

    def __call__(self, name: str, rows: np.ndarray) -> None:
        if rows.shape[0] < MIN_ROWS:
            return
        if not (name.startswith("blk.") or (self.process_output and name == "output.weight")):
            return
        sq = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if name in self.sums:
            if self.sums[name].shape != sq.shape:
                raise InputInvalid(f"inconsistent activation size for {name}")
            self.sums[name] += sq
        else:
            self.sums[name] = sq
            self.counts[name] = 0
        self.counts[name] += rows.shape[0]
        if not np.isfinite(self.sums[name]).all():
            raise InputInvalid(f"non-finite activations in {name}")

    def per_column_means(self) -> dict[str, np.ndarray]:
        """What llama-quantize derives from the file: in_sum2 / count per column (float32)."""
        return {n: (self.sums[n].astype(np.float32) / np.float32(self.counts[n])) for n in self.sums}

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
            writer.add_tensor(f"{name}.in_sum2", self.sums[name].astype(np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.array([[self.counts[name]]], dtype=np.float32))
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
    collector = ImatrixCollector(process_output)
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
