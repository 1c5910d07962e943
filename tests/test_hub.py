"""quantcli.hub against a real on-disk Hugging Face cache (HF_HUB_OFFLINE=1: never the network)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects
from test_batch_models import hub_cache

from quantcli import hub
from quantcli.errors import InputMissing, Unsupported
from quantcli.jobstate import MODEL_FILE_PATTERNS

LLAMA_CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
MAMBA_CONFIG = json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}).encode()


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """Record every download request quantcli makes (and still perform it)."""
    calls: list[tuple[str, object]] = []
    real_file, real_snapshot = huggingface_hub.hf_hub_download, huggingface_hub.snapshot_download

    def file_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append(("file", filename))
        return real_file(repo_id, filename, **kwargs)

    def snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append(("snapshot", kwargs.get("allow_patterns")))
        return real_snapshot(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", file_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    return calls


def test_hub_id_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.parse_hub_id("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    assert hub.parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert hub.parse_hub_id("org/name@refs/pr/3") == ("org/name", "refs/pr/3")
    for not_an_id in ("model.safetensors", "a/b/c", "/abs/path", "./rel/x", "dir/model.safetensors", "org/"):
        assert hub.parse_hub_id(not_an_id) is None, not_an_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not hub.is_hub_source("org/name")  # an existing local directory wins
    assert hub.resolve_source("org/name") == Path("org/name")
    assert hub.resolve_source(tmp_path) == tmp_path


def test_cache_location_follows_env_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.hub_cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline()


def test_resolves_repo_id_to_cached_snapshot(offline_home: Path, hub_calls: list, tmp_path: Path) -> None:
    weights = b"\x08" + bytes(7) + b"{}      "
    snapshot = hub_cache(offline_home, "org/tiny", {
        "config.json": LLAMA_CONFIG, "model.safetensors": weights, "tokenizer.json": b"{}",
    }, tags=("v1",))
    assert hub.resolve_source("org/tiny") == snapshot
    assert hub.resolve_source("org/tiny@v1") == snapshot
    assert hub.resolve_source(f"org/tiny@{snapshot.name}") == snapshot
    assert (snapshot / "model.safetensors").read_bytes() == weights
    # config.json first (the architecture check), then the snapshot with the conversion's patterns only
    assert hub_calls[:2] == [("file", "config.json"), ("snapshot", list(MODEL_FILE_PATTERNS))]


def test_unsupported_architecture_refused_before_any_weight(offline_home: Path, hub_calls: list) -> None:
    # only config.json is cached: had quantcli asked for weights, the error would be "not in the hub cache"
    hub_cache(offline_home, "org/mamba", {"config.json": MAMBA_CONFIG})
    with pytest.raises(Unsupported, match="architecture MambaForCausalLM is not supported"):
        hub.resolve_source("org/mamba")
    assert hub_calls == [("file", "config.json")]


def test_offline_and_missing(offline_home: Path) -> None:
    with pytest.raises(InputMissing, match="not in the hub cache .* HF_HUB_OFFLINE is set"):
        hub.resolve_source("org/absent")
    hub_cache(offline_home, "org/noweights", {"config.json": LLAMA_CONFIG, "tokenizer.json": b"{}"})
    with pytest.raises(InputMissing, match="no .safetensors weights"):
        hub.resolve_source("org/noweights")
    hub_cache(offline_home, "org/binonly", {"config.json": LLAMA_CONFIG, "pytorch_model.bin": b"x"})
    with pytest.raises(Unsupported, match="only safetensors"):
        hub.resolve_source("org/binonly")
    with pytest.raises(InputMissing, match="no such file or directory"):
        hub.resolve_source("./not/here")


def test_download_patterns_select_exactly_the_conversion_files() -> None:
    repo_files = [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
        "tokenizer_config.json", "special_tokens_map.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
        "onnx/model.onnx", "model.gguf", "README.md", ".gitattributes", "original/consolidated.00.pth",
        "flax_model.msgpack", "vocab.json", "merges.txt",
    ]
    selected = set(filter_repo_objects(repo_files, allow_patterns=list(MODEL_FILE_PATTERNS)))
    assert selected == {
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
        "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    }


def test_convert_command_by_repo_id_offline(tmp_path: Path) -> None:
    """`quantcli convert org/name` from an offline hub cache: same bytes as converting the snapshot dir."""
    import os
    import subprocess
    import sys

    from test_batch_models import tiny_llama

    from quantcli.engine import convert_model

    model = tiny_llama(tmp_path / "model", seed=3)
    home = tmp_path / "hf"
    snapshot = hub_cache(home, "org/tiny-llama", {p.name: p for p in model.iterdir()}, tags=("v2",))
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "quantcli", "convert", "org/tiny-llama@v2", "--type", "q8_0",
                           "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    produced = Path(result["output"])
    assert produced.parent == work and "tiny-llama" in produced.name  # named after the repo, not the commit
    convert_model(snapshot, tmp_path / "expected.gguf", out_type="q8_0")
    assert produced.read_bytes() == (tmp_path / "expected.gguf").read_bytes()
    missing = subprocess.run([sys.executable, "-m", "quantcli", "convert", "org/other", "--json"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3 and "HF_HUB_OFFLINE is set" in missing.stderr
