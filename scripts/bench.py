"""`make bench`: runs every scripts/bench_*.py section, prints each, and writes docs/benchmarks.md.

Each section script prints Markdown (a heading, a table, notes) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_HEADING = "## Calibration"


def main() -> int:
    sections = sorted((REPO / "scripts").glob("bench_*.py"))
    only = set(sys.argv[1:])
    parts = []
    failed = 0
    for script in sections:
        name = script.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        print(f"== bench {name} ==", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            failed += 1
            parts.append(f"## {name}\n\nFAILED (exit {proc.returncode})\n")
        else:
            parts.append(proc.stdout.strip() + "\n")
        print(parts[-1], flush=True)
    cpu = platform.processor() or platform.machine()
    header = (
        "# Benchmarks\n\n"
        f"Produced by `make bench` (`python3 scripts/bench.py`) on {datetime.date.today().isoformat()}, "
        f"{cpu}, Python {platform.python_version()}. Ratios are from one run on the same machine.\n"
    )
    if not only:
        docs = REPO / "docs" / "benchmarks.md"
        # the Calibration section is written by scripts/measure_calibration.py (make bench-calibration), kept here
        kept = docs.read_text().partition(CALIBRATION_HEADING)[2] if docs.exists() else ""
        docs.write_text(header + "\n" + "\n".join(parts) + (f"\n{CALIBRATION_HEADING}{kept}" if kept else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
