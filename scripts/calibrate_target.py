"""Calibrate plan.target.CLASS_SENSITIVITY: how much one unit of a tensor class's imatrix-weighted squared
error moves the mean KL-divergence, measured with our runtime.

On the off-grid SmolLM2-135M F16 (scripts/bench_target.py makes it, its llama-imatrix and the texts), for
each tensor class: a file whose tensors of that class are Q4_0 (quantized with the imatrix) and every other
tensor F16; `quantcli eval --base F16` on CHUNKS x 512 tokens of the *calibration* text (never the
evaluation text) gives its mean KLD; engine.costs.measure_costs gives the class's summed weighted error at
Q4_0 with every sensitivity 1. The class's factor is KLD / error, scaled so the factors' geometric mean is 1.
Prints the table to paste into quantcli/plan/target.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_target import cache_dir, quantcli  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

from quantcli.engine.costs import measure_costs  # noqa: E402
from quantcli.loaders.gguf import GGUFFile  # noqa: E402
from quantcli.plan import target as target_module  # noqa: E402
from quantcli.plan.core import TensorDecision  # noqa: E402
from quantcli.plan.metadata import load_imatrix_use  # noqa: E402
from quantcli.plan.rules import Category, category_of  # noqa: E402

CHUNKS = 6
CLASSES = (Category.TOKEN_EMBD, Category.ATTENTION_Q, Category.ATTENTION_K, Category.ATTENTION_V,
           Category.ATTENTION_OUTPUT, Category.FFN_GATE, Category.FFN_UP, Category.FFN_DOWN)  # fmt: skip
PATTERNS = {Category.TOKEN_EMBD: "token_embd"} | {c: f"\\.{c.value}\\." for c in CLASSES[1:]}


def main() -> None:
    work = cache_dir("bench-target")
    f16, imatrix, calib = work / "offgrid-f16.gguf", work / "imatrix-calib.gguf", work / "calib.txt"
    if not (f16.exists() and imatrix.exists()):
        sys.exit("run scripts/bench_target.py first (it makes the F16, the imatrix and the texts)")
    target_module.CLASS_SENSITIVITY.clear()  # measure raw errors
    use = load_imatrix_use(str(imatrix))
    src = GGUFFile(f16)
    try:
        decisions = [TensorDecision(t.name, t.ne, t.type, T.Q4_0, "calibration") for t in src.tensors.values()
                     if category_of(t.name) in CLASSES]  # fmt: skip
        costs = measure_costs(src, decisions, use)
    finally:
        src.close()
    factors = {}
    for cat in CLASSES:
        error = sum(costs[d.name][T.Q4_0] for d in decisions if category_of(d.name) == cat)
        out = work / f"calib-{cat.value}-q4_0.gguf"
        # the imatrix has no token_embd entry (llama-imatrix skips it), and quantize refuses an imatrix that
        # applies to no quantized tensor: token_embd is quantized without it, as it would be anyway
        weights = ["--imatrix", imatrix] if cat != Category.TOKEN_EMBD else []
        quantcli("quantize", f16, out, "Q8_0", *weights, "--tensor-type", f"{PATTERNS[cat]}=q4_0",
                 "--tensor-type", ".=f16", "--force")  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "quantcli", "eval", out, "--base", f16, "--text", calib,
                               "--chunks", str(CHUNKS), "--json"], capture_output=True, text=True, cwd=REPO,
                              check=True)  # fmt: skip
        kld = json.loads(proc.stdout)["kld_mean"]
        factors[cat] = kld / error
        print(f"{cat.value}: KLD {kld:.5f}, weighted error {error:.4g}, KLD/error {factors[cat]:.4g}",
              file=sys.stderr, flush=True)
    scale = math.exp(sum(math.log(f) for f in factors.values()) / len(factors))
    print("CLASS_SENSITIVITY: dict[Category, float] = {")
    for cat, f in factors.items():
        print(f"    Category.{cat.name}: {f / scale:.3g},")
    print("}")


if __name__ == "__main__":
    main()
