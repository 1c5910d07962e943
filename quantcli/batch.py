"""`quantcli batch`: many conversions from one manifest, on a local process pool or on Ray (docs/batch.md).

A job is exactly one `convert_model` call (the unit of work of the `convert` command): the same function runs
in-process (`--jobs 1`), in a spawn-context process pool (`--jobs N`) or as one Ray task per job (`--ray`).
Every job is idempotent: after its output is renamed into place a sidecar `<output>.quantcli.json` records
the inputs' fingerprint, the options and the version, and a job whose output is complete and current is
skipped. Each job keeps a per-tensor cache beside its output while it runs, so a batch killed midway and
started again re-does only unfinished jobs, and inside those only the unfinished tensors.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from quantcli.atomic import remove_stale_temps
from quantcli.engine import Job as EngineJob
from quantcli.engine import make_job, run
from quantcli.engine.target import FORMATS, default_output_name, resolve_target
from quantcli.errors import ExitCode, InputInvalid, InputMissing, OutputExists, QuantcliError

ENTRY_KEYS = {"source", "type", "types", "bits", "format", "output", "options"}
# Manifest `options:` a job passes to the engine, by their Python names (the CLI's flags, `-` -> `_`).
JOB_OPTIONS = ("group_size", "max_shard_size", "imatrix", "include_weights", "exclude_weights", "pure",
               "output_tensor_type", "token_embedding_type", "tensor_types", "tensor_type_file",
               "leave_output_tensor", "override_kv", "strict", "verify", "max_kld", "eval_text", "verify_chunks",
               "method", "calib", "calib_samples", "calib_seq_len", "act_order", "damp")
# A manifest lists jobs: anything bigger is a mistake or an attack. YAML aliases make a small file expand
# into an exponential number of values ("billion laughs"), so the parsed document is bounded too.
MAX_MANIFEST_BYTES = 16 << 20
MAX_MANIFEST_VALUES = 1_000_000


@dataclasses.dataclass(frozen=True)
class Job:
    entry: int  # 1-based entry number in the manifest (a `types:` list gives several jobs one entry)
    source: str  # local path (absolute) or hub id
    type: str  # GGUF type name, or "b<bits>" for packed formats
    format: str
    output: str  # absolute path
    bits: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def convert_options(self) -> dict[str, Any]:
        """What the sidecar records: everything that decides the output bytes."""
        record: dict[str, Any] = {"type": self.type, "format": self.format}
        if self.bits is not None:
            record["bits"] = self.bits
        record.update(self.options)
        return record

    def engine_job(self, source: Path | str, *, force: bool = False, threads: int | None = None) -> EngineJob:
        """The engine's job for this entry: exactly what `quantcli convert` builds from the same request
        (`bits: N` is `--bits N`, `type: T` is `--type T`)."""
        request: dict[str, Any] = {"bits": self.bits} if self.bits is not None else {"out_type": self.type}
        return make_job(source, Path(self.output), format=self.format, force=force, threads=threads,
                        **request, **self.options)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


@dataclasses.dataclass
class EntryProblem:
    entry: int
    what: str  # a short description of the entry (its source, or its text)
    error: str
    exit_code: int = int(ExitCode.INPUT_INVALID)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": False, "entry": self.entry, "source": self.what, "error": self.error,
                "exit_code": self.exit_code}


class ManifestInvalid(InputInvalid):
    def __init__(self, problems: list[EntryProblem]) -> None:
        self.problems = problems
        n = len(problems)
        super().__init__(f"manifest: {n} invalid entr{'y' if n == 1 else 'ies'}; no job was started")


# --------------------------------------------------------------------------------------------------------
# Manifest parsing


def _model_name(source: str) -> str:
    from quantcli.hub import parse_hub_id

    parsed = parse_hub_id(source) if not Path(source).exists() else None
    if parsed is not None:
        return parsed[0].split("/")[1]
    path = Path(source)
    return path.stem if path.suffix == ".safetensors" else path.resolve().name


def _raw_entries(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """(entries, defaults) from a YAML manifest or a text manifest."""
    try:
        if path.is_file() and path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputInvalid(f"{path}: manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputMissing(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputInvalid(f"{path}: cannot read manifest ({exc})") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputInvalid(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            raise InputInvalid(f"{path}: not valid YAML (nested too deeply)") from None
        if not _fewer_values_than(data, MAX_MANIFEST_VALUES):
            raise InputInvalid(
                f"{path}: manifest expands to more than {MAX_MANIFEST_VALUES:,} values (YAML aliases?)"
            )
        return _yaml_entries(path, data)
    return _text_entries(text), {}


def _fewer_values_than(data: Any, limit: int) -> bool:
    """Count the values of a parsed YAML document as if aliases were expanded, stopping at `limit`."""
    stack, seen = [data], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _yaml_entries(path: Path, data: Any) -> tuple[list[Any], dict[str, Any]]:
    if data is None:
        raise InputInvalid(f"{path}: manifest is empty")
    if isinstance(data, list):
        return data, {}
    if not isinstance(data, dict):
        raise InputInvalid(f"{path}: a manifest is a list of jobs or a mapping with `jobs:` / `models:`")
    unknown = set(data) - {"jobs", "models", "types", "defaults", "output_dir"}
    if unknown:
        raise InputInvalid(f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    if not isinstance(data.get("defaults") or {}, dict):
        raise InputInvalid(f"{path}: `defaults:` must be a mapping")
    defaults = dict(data.get("defaults") or {})
    if "output_dir" in data:
        if not isinstance(data["output_dir"], str):
            raise InputInvalid(f"{path}: `output_dir:` must be a path")
        defaults["output_dir"] = data["output_dir"]
    if not isinstance(data.get("jobs") or [], list):
        raise InputInvalid(f"{path}: `jobs:` must be a list of jobs")
    entries: list[Any] = list(data.get("jobs") or [])
    models = data.get("models") or []
    if not isinstance(models, list):
        raise InputInvalid(f"{path}: `models:` must be a list of sources")
    if models and "types" not in data and "types" not in defaults and "type" not in defaults:
        raise InputInvalid(f"{path}: `models:` needs `types:` (the list every model is converted to)")
    for model in models:  # a model list crossed with `types:`
        entries.append(model if isinstance(model, dict) else {"source": model, "types": data.get("types")})
    if not entries:
        raise InputInvalid(f"{path}: manifest has no jobs")
    return entries, defaults


def _text_entries(text: str) -> list[Any]:
    """`SOURCE [TYPE[,TYPE...]] [OUTPUT]` per line; `#` starts a comment."""
    entries: list[Any] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            entries.append(None)  # keeps entry numbers equal to line numbers
            continue
        fields = line.split()
        entry: dict[str, Any] = {"source": fields[0]}
        if len(fields) > 1:
            entry["types"] = fields[1].split(",")
        if len(fields) > 2:
            entry["output"] = fields[2]
        if len(fields) > 3:
            entry["_error"] = f"expected `SOURCE [TYPE[,TYPE...]] [OUTPUT]`, got {len(fields)} fields"
        entries.append(entry)
    return entries


def _type_name(target: Any) -> str:
    """How a job names its type in outputs and sidecars: "q4_k_m", "q8_0" (the converter's), "mlx-4bit"."""
    return target.scheme_label.lower()


def _option_int(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _expand_entry(number: int, raw: Any, defaults: dict[str, Any], base: Path) -> tuple[list[Job], list[str]]:
    """The jobs of one manifest entry, or the problems that make it invalid."""
    if not isinstance(raw, dict):
        return [], [f"an entry is a mapping with `source:` (got {type(raw).__name__})"]
    problems: list[str] = []
    if "_error" in raw:
        return [], [raw["_error"]]
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        problems.append(f"unknown key(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(ENTRY_KEYS))})")
    merged = {k: v for k, v in defaults.items() if k != "output_dir"} | raw
    source = merged.get("source")
    if not isinstance(source, str) or not source:
        return [], [*problems, "missing `source:`"]
    from quantcli.hub import parse_hub_id

    local = Path(os.path.expanduser(source))
    if not local.is_absolute():
        local = base / local  # relative to the manifest; a local path wins over a Hub id
    if local.exists():
        if local.is_dir() and not (local / "config.json").is_file():
            problems.append(f"source {source}: no config.json in that directory")
        source = str(local.resolve())
    elif parse_hub_id(source) is None:
        return [], [*problems, f"source {source}: no such file or directory (nor a Hub id org/name[@rev])"]
    elif source.startswith((".", "/", "~")):
        return [], [*problems, f"source {source}: no such file or directory"]

    fmt = str(merged.get("format") or "gguf").lower()
    if fmt not in FORMATS:
        problems.append(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    options = merged.get("options") or {}
    if not isinstance(options, dict):
        problems.append("`options:` must be a mapping of convert options")
        options = {}

    # type | types | bits (a single value or a list) → list of (type name, bits)
    specs: list[tuple[Any, int | None]] = []
    given = [k for k in ("type", "types", "bits") if raw.get(k) is not None]
    if len(given) > 1:
        problems.append(f"give one of `type`, `types`, `bits` (got {', '.join(given)})")
    elif not given:  # fall back to defaults
        given = [k for k in ("type", "types", "bits") if merged.get(k) is not None][:1]
    values: list[Any] = []
    key = given[0] if given else None
    if key is not None:
        value = merged[key]
        values = value if isinstance(value, list) else [value]
    if key is None or not values:
        if fmt == "gguf":
            values, key = ["auto"], "type"
        else:
            problems.append(f"format {fmt} needs `bits:`")
    for value in values:
        # One rule with `convert`: `type: T` is --type T, `bits: N` is --bits N (a GGUF recipe or the packed
        # format's width); engine.target decides what each means, and refuses what cannot run.
        bits = value if key == "bits" and isinstance(value, int) and not isinstance(value, bool) else None
        if key == "bits" and bits is None:
            problems.append(f"bits {value!r} is not a whole number")
            continue
        try:
            if key == "bits":
                target = resolve_target(None, bits, fmt, _option_int(options, "group_size"))
            elif fmt != "gguf":
                problems.append(f"format {fmt} takes `bits:`, not a type ({value!r})")
                continue
            else:
                target = resolve_target(str(value), None, fmt)
        except QuantcliError as exc:
            problems.append(str(exc))
            continue
        specs.append((target, bits))
    if problems:
        return [], problems

    unknown_options = set(options) - set(JOB_OPTIONS)
    if unknown_options:
        return [], [f"unknown option(s): {', '.join(sorted(unknown_options))} (allowed: {', '.join(JOB_OPTIONS)})"]
    out_template = merged.get("output")
    out_dir = Path(os.path.expanduser(str(defaults.get("output_dir") or ".")))
    if not out_dir.is_absolute():
        out_dir = base / out_dir
    if out_template is not None and len(specs) > 1 and not re.search(r"\{(type|TYPE|bits)\}", str(out_template)):
        return [], [f"output {out_template!r} is used for {len(specs)} types: put {{type}} in it"]
    jobs: list[Job] = []
    name = _model_name(source)
    for target, bits in specs:
        type_name = _type_name(target)
        if out_template is None:  # the name `convert` gives the same output (engine.target)
            text = default_output_name(name, target, type_name.upper())
        else:
            try:
                text = str(out_template).format(name=name, type=type_name, TYPE=type_name.upper(), bits=bits or "",
                                                format=fmt)  # fmt: skip
            except (KeyError, IndexError, ValueError) as exc:
                return [], [f"output {out_template!r}: bad placeholder ({exc}); use {{name}} {{type}} {{TYPE}} {{bits}} {{format}}"]
        output = Path(os.path.expanduser(text))
        if not output.is_absolute():
            output = out_dir / output
        job = Job(number, source, type_name, fmt, str(output.resolve()), bits, dict(options))
        try:
            job.engine_job(source)  # every option combination is checked now, before any job starts
        except QuantcliError as exc:
            return [], [str(exc)]
        jobs.append(job)
    return jobs, []


def load_manifest(
    path: Path | str, *, output_dir: Path | str | None = None, types: Iterable[str] | None = None
) -> list[Job]:
    """Parse and validate a whole manifest; raise ManifestInvalid listing every bad entry."""
    path = Path(path)
    entries, defaults = _raw_entries(path)
    if output_dir is not None:  # the command line wins over the manifest
        defaults["output_dir"] = str(Path(output_dir).resolve())
    if types:
        defaults.setdefault("types", list(types))
    base = path.resolve().parent  # relative paths in a manifest are relative to the manifest
    jobs: list[Job] = []
    problems: list[EntryProblem] = []
    for number, raw in enumerate(entries, start=1):
        if raw is None:
            continue
        entry_jobs, entry_problems = _expand_entry(number, raw, defaults, base)
        what = str(raw.get("source")) if isinstance(raw, dict) else repr(raw)
        problems.extend(EntryProblem(number, what, p) for p in entry_problems)
        jobs.extend(entry_jobs)
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.output in seen:
            problems.append(EntryProblem(job.entry, job.source,
                                         f"output {job.output} is also the output of entry {seen[job.output].entry}"))
        else:
            seen[job.output] = job
        if job.format == "gguf" and Path(job.output).is_dir():
            problems.append(EntryProblem(job.entry, job.source, f"output {job.output} is a directory"))
    if problems:
        raise ManifestInvalid(sorted(problems, key=lambda p: p.entry))
    if not jobs:
        raise InputInvalid(f"{path}: manifest has no jobs")
    return jobs


# --------------------------------------------------------------------------------------------------------
# One job (runs in the caller, a pool worker or a Ray worker: module-level and picklable)


def _convert(source: Path, job: Job, *, force: bool, threads: int | None, tensor_cache: Any) -> dict[str, Any]:
    return run(job.engine_job(source, force=force, threads=threads), tensor_cache=tensor_cache)


def run_job(job_data: dict[str, Any], force: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Run one job; never raises for a job failure: returns a result record (`ok`, `status`, ...)."""
    from quantcli.hub import resolve_source
    from quantcli.jobstate import (
        TensorCache,
        inputs_fingerprint,
        is_current,
        output_matches_sidecar,
        read_sidecar,
        write_sidecar,
    )

    job = Job.from_dict(job_data)
    output: Path | None = None
    cache: TensorCache | None = None
    started = time.perf_counter()
    record: dict[str, Any] = {"entry": job.entry, "source": job.source, "type": job.type, "format": job.format,
                              "output": job.output}
    try:
        local = resolve_source(job.source)
        # every file the job reads decides its bytes: the model's, the imatrix, the tensor-type file, --calib
        files = job.engine_job(local).input_files()
        inputs = inputs_fingerprint(files)
        options = job.convert_options()
        output = Path(job.output)
        overwrite = force
        if output.exists():
            if is_current(output, inputs=inputs, options=options):
                recorded = read_sidecar(output)["output"]
                return record | {"ok": True, "status": "skipped", "seconds": round(time.perf_counter() - started, 3),
                                 "bytes": recorded["bytes"], "sha256": recorded["sha256"]}
            sidecar = read_sidecar(output)
            if sidecar is not None and (sidecar.get("output") is None or output_matches_sidecar(output, sidecar)):
                # quantcli's own output: stale (inputs, options or version changed) or its run was killed
                # between the output's rename and the final sidecar
                overwrite = True
            elif not force:
                raise OutputExists(f"{output} exists and has no matching {output.name}.quantcli.json "
                                   "(not made by this batch); use --force to overwrite")
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output)  # a killed earlier run's partial output (its owner is gone)
        write_sidecar(output, inputs=inputs, options=options, result=None)
        cache = TensorCache.for_output(output, resume=True)
        result = _convert(local, job, force=overwrite, threads=threads, tensor_cache=cache)
        write_sidecar(output, inputs=inputs, options=options, result=result)
        cache.discard()  # (a packed job never fills it)
        # the job's convert result, with the manifest's own request (its source as written: a Hub id stays an
        # id) and batch's status; `seconds` include the skip check
        result = {k: v for k, v in result.items() if k not in ("schema", "command")}
        return result | record | {"ok": True, "status": "converted", "seconds": round(time.perf_counter() - started, 3),
                                  "tensor_cache": cache.stats()}
    except QuantcliError as exc:
        _tidy_after_failure(output, cache)
        return record | {"ok": False, "status": "failed", "error": str(exc), "error_type": type(exc).__name__,
                         "exit_code": int(exc.exit_code), "seconds": round(time.perf_counter() - started, 3)}
    except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the others
        return record | {"ok": False, "status": "failed", "error": f"internal error: {type(exc).__name__}: {exc}",
                         "error_type": "InternalError", "exit_code": int(ExitCode.INTERNAL),
                         "traceback": traceback.format_exc(limit=8),
                         "seconds": round(time.perf_counter() - started, 3)}


def _tidy_after_failure(output: Path | None, cache: Any) -> None:
    """After a failed job whose output does not exist: drop its "in progress" sidecar (it describes no
    file) and its tensor cache if the cache is empty. A cache with entries stays, for the re-run."""
    from quantcli.jobstate import read_sidecar, sidecar_path

    if output is None or output.exists():
        return
    sidecar = read_sidecar(output)
    if sidecar is not None and sidecar.get("output") is None:
        sidecar_path(output).unlink(missing_ok=True)
    if cache is not None and cache.directory.is_dir() and not any(cache.directory.iterdir()):
        cache.discard()


def _failure(job: Job, error: str, error_type: str = "WorkerDied") -> dict[str, Any]:
    return {"entry": job.entry, "source": job.source, "type": job.type, "format": job.format,
            "output": job.output, "ok": False, "status": "failed", "error": error, "error_type": error_type,
            "exit_code": int(ExitCode.INTERNAL)}


# --------------------------------------------------------------------------------------------------------
# Executors


def threads_per_job(n_parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, n_parallel))


def run_local(jobs: list[Job], *, parallel: int = 1, force: bool = False) -> Iterator[dict[str, Any]]:
    """Yield each job's result as it finishes: in-process for `parallel == 1`, else a spawn process pool."""
    threads = threads_per_job(parallel)
    if parallel <= 1:
        for job in jobs:
            yield run_job(job.to_dict(), force, threads)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn: a clean interpreter per worker (no forked locks/threads from the parent, same on macOS/Linux)
    pool = ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    try:
        futures = {pool.submit(run_job, job.to_dict(), force, threads): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except BrokenProcessPool:
                yield _failure(job, "the worker process died (killed, or out of memory?)")
            except Exception as exc:  # noqa: BLE001
                yield _failure(job, f"{type(exc).__name__}: {exc}", "InternalError")
    except BaseException:
        # Ctrl-C / SIGTERM of the batch: stop the running conversions too (they clean up their temp files:
        # see _worker_init) instead of waiting for them. ProcessPoolExecutor has no public handle on its
        # workers; `_processes` has been there since Python 3.2.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.is_alive():
                process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_init() -> None:
    """Pool workers turn SIGTERM into KeyboardInterrupt, as the CLI does, so atomic outputs clean up."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_ray(jobs: list[Job], *, address: str, force: bool = False) -> Iterator[dict[str, Any]]:
    """One Ray task per job on the cluster at `address` ("local": a private one on this machine)."""
    try:
        import ray
    except ImportError:
        from quantcli.errors import Unsupported

        raise Unsupported("--ray needs Ray: pip install 'quantcli[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        local = address in ("", "local")
        runtime_env = None
        if local:
            import quantcli

            # Workers on this machine import quantcli from where the driver did, even from a checkout that is
            # not pip-installed. Cluster nodes must have quantcli installed (docs/batch.md): a driver-side
            # PYTHONPATH would mean nothing there.
            package_root = str(Path(quantcli.__file__).resolve().parent.parent)
            pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
            runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        ray.init(address=None if local else address, log_to_driver=False, runtime_env=runtime_env)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = max(1, min(threads_per_job(min(cpus, len(jobs))), cpus))
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        pending = {task.remote(job.to_dict(), force, threads): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a Ray worker crash is that job's failure
                    yield _failure(job, f"Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        if started_here:
            ray.shutdown()
