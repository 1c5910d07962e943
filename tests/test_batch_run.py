"""`quantcli batch` end to end on tiny random llamas: process pool and Ray give the bytes of sequential
`convert_model` runs; failures stay per job; re-runs skip finished jobs; a killed batch redoes only the
unfinished ones; the examples run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reference import require_module
from test_batch_models import hub_cache, tiny_llama

from quantcli.batch import load_manifest, run_ray
from quantcli.engine import convert_model

REPO = Path(__file__).resolve().parent.parent
TYPES = ("q8_0", "f16", "bf16")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: tiny_llama(root / name, seed=seed) for seed, name in enumerate(("alpha", "beta"), 1)}


@pytest.fixture(scope="module")
def reference(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], bytes]:
    """Sequential conversions, one `convert_model` call each: the bytes every executor must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    ref = {}
    for name, path in models.items():
        for t in TYPES:
            target = out / f"{name}-{t}.gguf"
            convert_model(path, target, out_type=t)
            ref[name, t] = target.read_bytes()
    return ref


def _manifest(path: Path, models: dict[str, Path], types: tuple[str, ...] = TYPES) -> Path:
    path.write_text("models:\n" + "".join(f"  - {p}\n" for p in models.values())
                    + f"types: [{', '.join(types)}]\noutput_dir: out\n")
    return path


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                **extra)


def _batch(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "quantcli", "batch", *args, "--json"], cwd=cwd,
                          env=env or _env(), capture_output=True, text=True, timeout=300)
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    jobs = [d for d in docs if d.get("event") == "job"]
    summary = [d for d in docs if d.get("event") == "summary"]
    if jobs:  # the summary repeats every job line
        assert len(summary) == 1 and summary[0]["jobs"] == [{k: v for k, v in j.items() if k not in (
            "schema", "command", "event")} for j in jobs], proc.stdout
    # job lines, then whatever else (the error object when jobs failed, manifest problems)
    return proc.returncode, jobs + [d for d in docs if "event" not in d], proc.stderr


def _assert_matches(out: Path, reference: dict[tuple[str, str], bytes], names: tuple[str, ...] = ("alpha", "beta")):
    for name in names:
        for t in TYPES:
            produced = out / f"{name}-{t.upper()}.gguf"
            assert produced.read_bytes() == reference[name, t], produced


def test_process_pool_matches_sequential_and_reruns_skip(models, reference, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "jobs.yaml", models)
    code, results, stderr = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
    assert code == 0, stderr
    assert sorted(r["status"] for r in results) == ["converted"] * 6
    _assert_matches(tmp_path / "out", reference)
    assert "6 converted, 0 skipped, 0 failed" in stderr
    out = tmp_path / "out"
    # sidecars written, per-tensor caches and temp files gone
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".gguf")) == sorted(
        f"{n}-{t.upper()}.gguf.quantcli.json" for n in ("alpha", "beta") for t in TYPES)
    sidecar = json.loads((out / "alpha-Q8_0.gguf.quantcli.json").read_text())
    assert sidecar["output"]["sha256"] == next(r["sha256"] for r in results if r["output"].endswith("alpha-Q8_0.gguf"))
    assert sidecar["options"] == {"type": "q8_0", "format": "gguf"}

    # second run: everything complete and current
    code, results, _ = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
    assert code == 0 and sorted(r["status"] for r in results) == ["skipped"] * 6

    # an input changes (mtime): only that model's three jobs are redone, its old outputs replaced
    weights = models["beta"] / "model.safetensors"
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        code, results, _ = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
        assert code == 0
        status = {Path(r["output"]).name: r["status"] for r in results}
        assert status == {f"{n}-{t.upper()}.gguf": "converted" if n == "beta" else "skipped"
                          for n in ("alpha", "beta") for t in TYPES}
        _assert_matches(out, reference)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the Ray tests: starting Ray is most of their cost."""
    ray = require_module("ray")
    # Workers (also those of the example script's job) inherit the raylet's environment: make quantcli
    # importable there even from a checkout that is not pip-installed.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    try:
        context = ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.mark.slow  # needs Ray (make install-clients)
def test_ray_matches_sequential(ray_cluster, models, reference, tmp_path: Path) -> None:
    jobs = load_manifest(_manifest(tmp_path / "jobs.yaml", models))
    results = list(run_ray(jobs, address="local"))  # uses the running instance, leaves it running
    assert sorted(r["status"] for r in results) == ["converted"] * 6, results
    _assert_matches(tmp_path / "out", reference)
    # the same manifest through the CLI, as another Ray driver on the same cluster: all current, all skipped
    code, again, stderr = _batch(str(tmp_path / "jobs.yaml"), "--ray", ray_cluster, cwd=tmp_path)
    assert code == 0, stderr
    assert [r["status"] for r in again] == ["skipped"] * 6


def test_failing_job_does_not_stop_the_others(models, reference, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(models["alpha"], broken)
    with open(broken / "model.safetensors", "r+b") as fh:
        fh.truncate(4096)  # header intact, data cut: the converter reports it
    manifest = tmp_path / "jobs.txt"
    manifest.write_text(f"{models['alpha']} q8_0\n{broken} q8_0\n{models['beta']} q8_0\n")
    code, results, stderr = _batch(str(manifest), "--jobs", "2", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert code == 10, stderr
    by_source = {Path(r["source"]).name: r for r in results if "entry" in r and "status" in r}
    assert by_source["broken"]["status"] == "failed" and by_source["broken"]["exit_code"] == 4
    assert by_source["alpha"]["status"] == by_source["beta"]["status"] == "converted"
    assert (tmp_path / "out" / "alpha-Q8_0.gguf").read_bytes() == reference["alpha", "q8_0"]
    assert not (tmp_path / "out" / "broken-Q8_0.gguf").exists()
    assert results[-1]["error_type"] == "BatchFailed" and "1 of 3 batch jobs failed" in results[-1]["error"]


def test_foreign_output_needs_force(models, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "alpha-Q8_0.gguf").write_bytes(b"someone else's file")
    manifest = tmp_path / "jobs.txt"
    manifest.write_text(f"{models['alpha']} q8_0\n")
    code, results, _ = _batch(str(manifest), "-o", str(out), cwd=tmp_path)
    assert code == 10 and results[0]["exit_code"] == 6 and "--force" in results[0]["error"]
    assert (out / "alpha-Q8_0.gguf").read_bytes() == b"someone else's file"
    code, results, _ = _batch(str(manifest), "-o", str(out), "--force", cwd=tmp_path)
    assert code == 0 and results[0]["status"] == "converted"
    assert (out / "alpha-Q8_0.gguf").read_bytes() == reference["alpha", "q8_0"]


def test_packed_format_job_matches_direct_write_and_reruns_skip(models, tmp_path: Path) -> None:
    from quantcli.loaders import open_checkpoint
    from quantcli.quants.packed import Scheme, get_format
    from quantcli.writers.packed import write_packed

    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(f"- {{source: {models['alpha']}, format: ct, bits: 4, options: {{group_size: 32}}}}\n"
                        f"- {{source: {models['beta']}, format: mlx, bits: 3, options: {{group_size: 32}}}}\n")
    code, results, stderr = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
    assert code == 0, stderr
    assert sorted(r["status"] for r in results) == ["converted", "converted"]
    for name, fmt, bits in (("alpha", "ct", 4), ("beta", "mlx", 3)):
        with open_checkpoint(models[name]) as ckpt:
            direct = tmp_path / f"direct-{name}"
            write_packed(ckpt, direct, get_format(fmt), Scheme(bits, 32, "bfloat16"))
        produced = tmp_path / f"{name}-{fmt.upper()}-{bits}bit"  # the name `convert` gives it
        assert sorted(p.name for p in produced.iterdir()) == sorted(p.name for p in direct.iterdir())
        for f in direct.iterdir():
            assert (produced / f.name).read_bytes() == f.read_bytes(), f.name
        assert json.loads((tmp_path / f"{name}-{fmt.upper()}-{bits}bit.quantcli.json").read_text())["output"]["bytes"] == sum(
            f.stat().st_size for f in direct.iterdir())
    code, results, _ = _batch(str(manifest), cwd=tmp_path)
    assert code == 0 and [r["status"] for r in results] == ["skipped", "skipped"]


def test_killed_batch_redoes_only_unfinished_jobs(models, reference, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "jobs.yaml", models)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "quantcli", "batch", str(manifest), "--jobs", "1", "--json"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    finished = [json.loads(proc.stdout.readline()) for _ in range(2)]  # two jobs reported done...
    os.kill(proc.pid, signal.SIGKILL)  # ...then kill the batch during the third
    proc.wait()
    assert [r["status"] for r in finished] == ["converted", "converted"]
    done_before = {r["output"] for r in finished}
    complete = {str(p)[: -len(".quantcli.json")] for p in out.glob("*.quantcli.json")
                if json.loads(p.read_text())["output"] is not None}
    assert done_before <= complete and len(complete) < 6

    code, results, stderr = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
    assert code == 0, stderr
    status = {r["output"]: r["status"] for r in results}
    assert sorted(o for o, s in status.items() if s == "skipped") == sorted(complete)
    assert sum(s == "converted" for s in status.values()) == 6 - len(complete)
    _assert_matches(out, reference)
    assert not [p for p in out.iterdir() if ".quantcli-tmp-" in p.name or p.name.endswith(".quantcli-cache")]


def test_hub_source_offline_and_unsupported_refused(models, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    files = {p.name: p for p in models["alpha"].iterdir()}
    snapshot = hub_cache(home, "org/alpha", files)
    config = json.loads((models["alpha"] / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    hub_cache(home, "org/mamba", {"config.json": json.dumps(config).encode()})  # no weights in the cache
    manifest = tmp_path / "jobs.txt"
    manifest.write_text("org/alpha q8_0\norg/mamba q8_0\n")
    env = _env(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    code, results, _ = _batch(str(manifest), "-o", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert code == 10
    by_source = {r["source"]: r for r in results if "status" in r}
    assert by_source["org/alpha"]["status"] == "converted"
    assert by_source["org/mamba"]["exit_code"] == 5
    assert "architecture MambaForCausalLM is not supported" in by_source["org/mamba"]["error"]
    expected = tmp_path / "expected.gguf"
    convert_model(snapshot, expected, out_type="q8_0")
    assert (tmp_path / "out" / "alpha-Q8_0.gguf").read_bytes() == expected.read_bytes()


def test_xargs_example(models, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    lines = [f"{models[n]} {t} {out}/{n}-{t.upper()}.gguf  # {n}" for n in ("alpha", "beta") for t in ("q8_0", "f16")]
    (tmp_path / "models.txt").write_text("# test list\n\n" + "\n".join(lines) + "\n")
    env = _env(QUANTCLI=f"{sys.executable} -m quantcli")
    cmd = ["bash", str(REPO / "examples" / "xargs-parallel.sh"), str(tmp_path / "models.txt"), "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 4 and all(r["ok"] for r in results)
    for n in ("alpha", "beta"):
        for t in ("q8_0", "f16"):
            assert (out / f"{n}-{t.upper()}.gguf").read_bytes() == reference[n, t]
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert [json.loads(line)["status"] for line in again.stdout.splitlines()] == ["skipped"] * 4


def test_slurm_example_runs_its_array_line(models, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "models.txt").write_text(
        f"# list\n{models['alpha']} q8_0 {out}/a.gguf\n\n{models['beta']} f16 {out}/b.gguf   # second\n")
    env = _env(QUANTCLI=f"{sys.executable} -m quantcli", SLURM_ARRAY_TASK_ID="2", SLURM_CPUS_PER_TASK="1")
    cmd = ["bash", str(REPO / "examples" / "slurm-array.sh"), "models.txt"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    assert (out / "b.gguf").read_bytes() == reference["beta", "f16"] and not (out / "a.gguf").exists()
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0 and "done already" in rerun.stderr
    past_end = subprocess.run(cmd, cwd=tmp_path, env=dict(env, SLURM_ARRAY_TASK_ID="3"), capture_output=True,
                              text=True, timeout=120)
    assert past_end.returncode == 2 and "no line 3" in past_end.stderr


@pytest.mark.slow  # needs Ray (make install-clients)
def test_ray_example(ray_cluster, models, reference, tmp_path: Path) -> None:
    (tmp_path / "jobs.txt").write_text(f"{models['alpha']} q8_0\n{models['beta']} bf16\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ray_cluster.py"), "jobs.txt", "--address", ray_cluster,
         "--output-dir", "out"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["status"] for r in results) == ["converted", "converted"]
    assert (tmp_path / "out" / "alpha-Q8_0.gguf").read_bytes() == reference["alpha", "q8_0"]
    assert (tmp_path / "out" / "beta-BF16.gguf").read_bytes() == reference["beta", "bf16"]


def test_examples_syntax() -> None:
    import yaml

    for script in ("slurm-array.sh", "xargs-parallel.sh"):
        subprocess.run(["bash", "-n", str(REPO / "examples" / script)], check=True)
    slurm = (REPO / "examples" / "slurm-array.sh").read_text()
    assert "#SBATCH --array=" in slurm and "SLURM_ARRAY_TASK_ID" in slurm
    workflow = yaml.safe_load((REPO / "examples" / "github-actions-matrix.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "workflow_dispatch" in triggers
    job = workflow["jobs"]["convert"]
    assert job["runs-on"] and job["strategy"]["matrix"]["type"] and job["strategy"]["fail-fast"] is False
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert "quantcli convert" in runs and any("upload-artifact" in step.get("uses", "") for step in job["steps"])
    for manifest in ("jobs.yaml", "models.txt"):
        assert (REPO / "examples" / manifest).is_file()


@pytest.mark.slow
def test_smollm2_job_in_the_pool_matches_sequential(smollm2_dir: Path, models, reference, tmp_path: Path) -> None:
    manifest = tmp_path / "jobs.txt"
    manifest.write_text(f"{smollm2_dir} q8_0 smol.gguf\n{models['alpha']} q8_0 alpha.gguf\n")
    code, results, stderr = _batch(str(manifest), "--jobs", "2", cwd=tmp_path)
    assert code == 0, stderr
    expected = tmp_path / "expected.gguf"
    result = convert_model(smollm2_dir, expected, out_type="q8_0")
    assert (tmp_path / "smol.gguf").read_bytes() == expected.read_bytes()
    assert next(r for r in results if r["output"].endswith("smol.gguf"))["sha256"] == result["sha256"]
    assert (tmp_path / "alpha.gguf").read_bytes() == reference["alpha", "q8_0"]
