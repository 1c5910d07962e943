"""Quantizer throughput: our NumPy path, our C path, ggml's own kernel and gguf-py, from one run.

Prints a Markdown section on stdout (progress on stderr). Input: a 4096x1024 float32 tensor of N(0, 1) values
(16 MB), the shape of a small model's projection matrix. MB/s = MB of float32 input per second (single-thread
columns: this thread's CPU time; the all-threads column: wall time), best of a few repeats. ggml = `ggml_quantize_chunk` from the reference libggml-base (single-threaded by
construction); gguf-py = `gguf.quants.quantize` (NumPy, no imatrix support). Slow NumPy quantizers are timed
on fewer rows (the row count is given in the cell); all quantizers are row-local, so MB/s carries over.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gguf import GGMLQuantizationType  # noqa: E402

from quantcli import native  # noqa: E402
from quantcli.quants import quantize  # noqa: E402

T = GGMLQuantizationType
TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
         T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4]  # fmt: skip
USES_IMATRIX = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS}
ROWS, COLS = 4096, 1024
NUMPY_BUDGET_S = 0.6  # per NumPy cell: grow the slice until one run takes about this long


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_time(fn, min_total: float = 0.4, max_repeats: int = 5, clock=time.thread_time) -> float:
    """Best time of `fn()` over up to `max_repeats` runs (stops once `min_total` seconds were spent).

    Single-threaded work is timed with this thread's CPU time (`time.thread_time`), so other processes on a
    shared machine do not distort the ratios; the multi-threaded column passes `clock=time.perf_counter`.
    """
    best, spent, n = float("inf"), 0.0, 0
    while n < max_repeats and (n == 0 or spent < min_total):
        t0 = clock()
        fn()
        dt = clock() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def time_numpy_slice(fn, x: np.ndarray) -> tuple[float, int]:
    """MB/s of fn on the smallest slice of x that takes ~NUMPY_BUDGET_S (or all of x); returns (MB/s, rows)."""
    rows = 16
    while True:
        part = x[:rows]
        t = best_time(lambda part=part: fn(part), min_total=0.0, max_repeats=1)
        if t >= NUMPY_BUDGET_S / 4 or rows >= x.shape[0]:
            return mbps(part.nbytes, t), rows
        rows = min(x.shape[0], max(2 * rows, int(rows * NUMPY_BUDGET_S / max(t, 1e-4))))


def fmt(value: float | None, rows: int | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return text if rows in (None, ROWS) else f"{text} ({rows} rows)"


def measure(
    qtype: GGMLQuantizationType,
    im: np.ndarray | None,
    x: np.ndarray,
    ggml,
    threads: int,
    slowest_numpy: list[str],
) -> str:
    """One table row: NumPy, C (1 thread), ggml, C/ggml, gguf-py, C (all threads)."""
    import gguf.quants as gguf_quants

    label = qtype.name + (" + imatrix" if im is not None else "")
    log(f"bench {label}")
    c1 = cn = g = gp = npy = None
    np_rows = None
    ref = None
    if ggml is not None:
        g = mbps(x.nbytes, best_time(lambda: ggml.quantize(int(qtype), x, im)))
        ref = ggml.quantize(int(qtype), x, im)
    if native.available():
        c1 = mbps(x.nbytes, best_time(lambda: native.quantize_rows(qtype, x, im, 1)))
        cn = mbps(
            x.nbytes, best_time(lambda: native.quantize_rows(qtype, x, im, threads), clock=time.perf_counter)
        )
        if ref is not None and not np.array_equal(native.quantize_rows(qtype, x, im, threads), ref):
            log(f"WARNING: C {label} bytes differ from ggml")
            c1 = cn = None
    try:
        npy, np_rows = time_numpy_slice(lambda part: quantize(part, qtype, im, use_native=False), x)
    except Exception as exc:
        log(f"NumPy {label} failed: {type(exc).__name__}: {exc}")
    if npy is not None and np_rows < ROWS:
        slowest_numpy.append(label)
    if im is None:
        try:
            gguf_quants.quantize(x[:8], qtype)
        except NotImplementedError:
            gp = None
        else:
            gp = mbps(x.nbytes, best_time(lambda: gguf_quants.quantize(x, qtype), max_repeats=2))
    ratio = f"{c1 / g:.2f}×" if c1 and g else "—"
    return f"| {label} | {fmt(npy, np_rows)} | {fmt(c1)} | {fmt(g)} | {ratio} | {fmt(gp)} | {fmt(cn)} |"


def main() -> int:
    try:
        from reference import ggml as get_ggml

        ggml = get_ggml()
    except Exception as exc:  # the reference build is optional for a bench run
        log(f"ggml reference unavailable: {exc}")
        ggml = None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    imatrix = np.exp(rng.uniform(-6.0, 6.0, COLS)).astype(np.float32)
    threads = native.default_threads()
    lines = []
    slowest_numpy: list[str] = []
    for qtype in TYPES:
        for im in (None, imatrix) if qtype in USES_IMATRIX else (None,):
            lines.append(measure(qtype, im, x, ggml, threads, slowest_numpy))
    print("## Quantizers (`scripts/bench_quants.py`)\n")
    print(
        f"MB/s (10^6 bytes) of float32 input, {ROWS}x{COLS} N(0,1) tensor ({x.nbytes / 2**20:.0f} MiB), best of up "
        "to 5 runs. Single-thread columns are timed in this thread's CPU time (robust on a shared machine), the "
        "last column in wall time. "
        f"C = quantcli's optional C library ({'loaded' if native.available() else 'NOT available: ' + str(native.problem())}); "
        f"C/ggml compares single-thread speed. Last column: C with {threads} threads "
        f"(`os.sched_getaffinity`). Every C result was checked byte-identical to ggml in the same run.\n"
    )
    print("| type | NumPy | C, 1 thread | ggml, 1 thread | C / ggml | gguf-py | C, all threads |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    print(
        "\nNumPy cells marked (N rows) were timed on the first N rows only, because those quantizers are slow"
        f" ({', '.join(slowest_numpy) or 'none'}). '—': not available (gguf-py has no quantizer for the type and"
        " never uses an imatrix; a failing implementation is also shown as '—' and logged on stderr)."
    )
    print(
        f"\nCPU threads available: {threads}; machine: {os.uname().machine}. The all-threads column is wall time and"
        " shows the real speed-up only on an otherwise idle machine (on a busy one it can even be below the"
        " single-thread CPU-time figure)."
    )
    print_dequant_table(x, ggml)
    return 0


def print_dequant_table(x: np.ndarray, ggml) -> None:
    """Second table: dequantization (to_float) speed, MB/s of float32 output, single thread."""
    lines = [dequant_row(qtype, x, ggml) for qtype in TYPES]
    print("\n### Dequantization (to_float)\n")
    print(
        "MB/s of float32 output for the same tensor, single thread (CPU time): `quantcli.quants.dequantize` "
        "(NumPy), `quantcli.native.dequantize_rows`, ggml's type traits `to_float`. All three give identical bits.\n"
    )
    print("| type | NumPy | C, 1 thread | ggml, 1 thread | C / ggml |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(lines))


def dequant_row(qtype: GGMLQuantizationType, x: np.ndarray, ggml) -> str:
    from quantcli.quants import dequantize

    log(f"bench dequantize {qtype.name}")
    data = quantize(x, qtype)
    npy = c1 = g = None
    try:
        npy = mbps(x.nbytes, best_time(lambda: dequantize(data, qtype, x.shape), max_repeats=3))
    except Exception as exc:
        log(f"NumPy dequantize {qtype.name} failed: {type(exc).__name__}: {exc}")
    if native.available():
        c1 = mbps(x.nbytes, best_time(lambda: native.dequantize_rows(qtype, data, COLS, 1)))
    if ggml is not None:
        g = mbps(x.nbytes, best_time(lambda: ggml.dequantize(int(qtype), data, ROWS, COLS)))
    ratio = f"{c1 / g:.2f}×" if c1 and g else "—"
    return f"| {qtype.name} | {fmt(npy)} | {fmt(c1)} | {fmt(g)} | {ratio} |"


if __name__ == "__main__":
    sys.exit(main())
