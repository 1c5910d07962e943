"""`quantcli batch JOBS`: run a manifest of conversions on a process pool or a Ray cluster (docs/batch.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from quantcli.console import err, out, print_wide

if TYPE_CHECKING:
    from rich.table import Table


def _human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _summary(results: list[dict[str, Any]], seconds: float) -> Table:
    from rich.table import Table

    counts = {s: sum(r["status"] == s for r in results) for s in ("converted", "skipped", "failed")}
    table = Table(title=f"quantcli batch: {counts['converted']} converted, {counts['skipped']} skipped, "
                        f"{counts['failed']} failed in {seconds:.1f} s", title_justify="left")
    for column in ("#", "source", "type", "output", "status", "time", "size"):
        table.add_column(column, justify="right" if column in ("#", "time", "size") else "left",
                         no_wrap=column != "status")  # paths are never wrapped
    style = {"converted": "green", "skipped": "cyan", "failed": "bold red"}
    for r in sorted(results, key=lambda r: (r["entry"], r["output"])):
        status = r["status"] if r["ok"] else f"failed: {r.get('error', '')}"
        table.add_row(str(r["entry"]), r["source"], r["type"], r["output"], f"[{style[r['status']]}]{status}[/]",
                      f"{r.get('seconds', 0):.1f} s", _human_bytes(r.get("bytes")))
    return table


def batch(
    jobs_file: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest: YAML (.yaml/.yml) or text (one `SOURCE [TYPE[,TYPE]] [OUTPUT]` per line)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, metavar="N", help="Conversions run at once on this machine (process pool)."),
    ray_address: str = typer.Option(None, "--ray", metavar="ADDRESS",
                                    help="Run one Ray task per job: `local` (a Ray instance on this machine), `auto` (the cluster this node is in) or `ray://head:10001`. Needs `pip install 'quantcli[ray]'`."),
    output_dir: Path = typer.Option(None, "--output-dir", "-o", metavar="DIR", help="Directory for outputs not given in the manifest (default: the manifest's directory)."),
    types: str = typer.Option(None, "--types", metavar="TYPE[,TYPE]", help="Comma-separated types for entries that name none (crosses a plain model list with several types)."),
    force: bool = typer.Option(False, "--force", help="Overwrite outputs that this batch did not make (no current sidecar)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the manifest and list the jobs; convert nothing."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines on stdout: one per job as it finishes, then the summary."),
) -> None:
    """Convert many models/types from one manifest. Jobs whose output is complete and current are skipped;
    a failing job does not stop the others (exit code 10 if any failed)."""
    import time

    from quantcli.batch import ManifestInvalid, load_manifest, run_local, run_ray
    from quantcli.errors import BatchFailed, UsageError

    if ray_address is not None and jobs != 1:
        raise UsageError("--jobs is for the local process pool; with --ray, Ray schedules the jobs")
    type_list = [t.strip() for t in types.split(",") if t.strip()] if types else None
    try:
        job_list = load_manifest(jobs_file, output_dir=output_dir, types=type_list)
    except ManifestInvalid as exc:
        for problem in exc.problems:
            err.print(f"[bold red]entry {problem.entry}[/] ({problem.what}): {problem.error}", markup=True,
                      soft_wrap=True)
            if json_out:
                print(json.dumps(problem.to_dict()), flush=True)
        raise
    if dry_run:
        for job in job_list:
            if json_out:
                print(json.dumps({"ok": True, "status": "planned", **job.to_dict()}), flush=True)
            else:
                err.print(f"{job.entry}: {job.source} → {job.type} ({job.format}) → {job.output}", soft_wrap=True)
        return
    started = time.perf_counter()
    if ray_address is not None:
        stream = run_ray(job_list, address=ray_address, force=force)
    else:
        stream = run_local(job_list, parallel=jobs, force=force)
    results: list[dict[str, Any]] = []
    for result in stream:
        results.append(result)
        if json_out:  # a line per job as it finishes: a killed batch still reported what it finished
            job_doc = {k: v for k, v in result.items() if k != "traceback"}
            print(json.dumps({"schema": "quantcli/1", "command": "batch", "event": "job", **job_doc}), flush=True)
        elif not result["ok"]:
            err.print(f"[red]failed[/] {result['source']} → {result['output']}: {result.get('error')}", soft_wrap=True)
        if result.get("traceback"):
            print(result["traceback"], file=sys.stderr)
    seconds = round(time.perf_counter() - started, 3)
    # The summary table is the result (stdout); with --json stdout holds only JSON lines.
    print_wide(_summary(results, seconds), 240, err if json_out else out)
    if json_out:  # the last line: every job again, and the totals
        jobs_doc = [{k: v for k, v in r.items() if k != "traceback"} for r in results]
        print(json.dumps({"schema": "quantcli/1", "command": "batch", "event": "summary",
                          "ok": all(r["ok"] for r in results), "jobs": jobs_doc, "n_jobs": len(results),
                          "n_converted": sum(r["status"] == "converted" for r in results),
                          "n_skipped": sum(r["status"] == "skipped" for r in results),
                          "n_failed": sum(not r["ok"] for r in results), "seconds": seconds}), flush=True)  # fmt: skip
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise BatchFailed(f"{len(failed)} of {len(results)} batch jobs failed")


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
