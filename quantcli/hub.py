"""Hugging Face Hub sources: `org/name[@revision]` → a local snapshot directory (docs/batch.md).

`config.json` is fetched first and the architecture checked against quantcli's registry, so an unsupported
model is refused before a single weight byte is downloaded. Only the files a conversion reads are then
downloaded (safetensors + index, config, tokenizer files), into the ordinary hub cache, so a model fetched by
`hf download` is reused and vice versa. The environment is read at call time, as the `hf` CLI would:
HF_HUB_OFFLINE (cache only, no network), HF_TOKEN (private/gated repos), HF_HOME / HF_HUB_CACHE (cache
location).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from quantcli.errors import InputInvalid, InputMissing, Unsupported
from quantcli.jobstate import MODEL_FILE_PATTERNS

# org/name with the hub's allowed characters, optional @revision (branch, tag or commit).
_REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$")


def parse_hub_id(source: str) -> tuple[str, str | None] | None:
    """('org/name', revision or None) if `source` has the form of a hub id, else None."""
    match = _REPO_ID.match(source)
    if match is None or source.endswith((".safetensors", ".gguf", ".json")):
        return None
    return match["repo"], match["rev"]


def is_hub_source(source: str | os.PathLike[str]) -> bool:
    """A hub id that is not also an existing local path (a local directory always wins)."""
    text = os.fspath(source)
    return not Path(text).exists() and parse_hub_id(text) is not None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The hub cache, with huggingface_hub's precedence: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub. (huggingface_hub reads these once at import;
    reading them here at call time lets a process change them, as the tests and batch workers do.)"""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[name])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _download_kwargs(revision: str | None) -> dict[str, Any]:
    return {
        "revision": revision,
        "cache_dir": str(hub_cache_dir()),
        "local_files_only": hub_offline(),
        # None lets huggingface_hub find HF_TOKEN or the token saved by `hf auth login`.
        "token": os.environ.get("HF_TOKEN") or None,
    }


def _translate(exc: Exception, repo: str, revision: str | None, what: str) -> Exception:
    """huggingface_hub errors → quantcli's one-line errors with an exit code."""
    from huggingface_hub import errors as hf_errors

    where = f"{repo}@{revision}" if revision else repo
    if isinstance(exc, hf_errors.GatedRepoError):
        return InputMissing(f"{where}: gated repository; accept its terms on the Hub and set HF_TOKEN")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return InputMissing(f"{where}: repository not found (or private: set HF_TOKEN)")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return InputMissing(f"{where}: revision {revision!r} not found")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub could not be reached"
        return InputMissing(f"{where}: {what} is not in the hub cache ({hub_cache_dir()}) and {why}")
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return InputMissing(f"{where}: the repository has no {what}")
    return InputMissing(f"{where}: cannot download {what}: {type(exc).__name__}: {exc}")


def check_architecture(config: dict[str, Any], where: str) -> None:
    """Refuse a config.json whose architecture quantcli cannot convert (quantcli.arch registry)."""
    from quantcli.arch import get_arch

    get_arch(config, f"{where}: config.json")


def fetch_config(repo: str, revision: str | None) -> dict[str, Any]:
    """Download (or find in the cache) only `config.json` and return it parsed."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, "config.json", **_download_kwargs(revision))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one user-facing line
        raise _translate(exc, repo, revision, "config.json") from None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputInvalid(f"{repo}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputInvalid(f"{repo}: config.json is not a JSON object")
    return config


def download_model(repo: str, revision: str | None) -> Path:
    """Architecture check on config.json first, then the conversion's files only; returns the snapshot dir."""
    from huggingface_hub import snapshot_download

    where = f"{repo}@{revision}" if revision else repo
    check_architecture(fetch_config(repo, revision), where)
    try:
        snapshot = snapshot_download(repo, allow_patterns=list(MODEL_FILE_PATTERNS), **_download_kwargs(revision))
    except Exception as exc:  # noqa: BLE001
        raise _translate(exc, repo, revision, "model files") from None
    directory = Path(snapshot)
    if not any(directory.glob("*.safetensors")):
        if any(directory.glob("*.bin")) or any(directory.glob("*.pth")):
            raise Unsupported(f"{where}: only safetensors checkpoints are supported")
        raise InputMissing(f"{where}: no .safetensors weights in {directory}")
    return directory


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """A local path is returned unchanged; `org/name[@revision]` becomes a local hub snapshot directory."""
    text = os.fspath(source)
    if Path(text).exists():
        return Path(text)
    parsed = parse_hub_id(text)
    if parsed is None:
        raise InputMissing(f"{text}: no such file or directory (and not a Hub id of the form org/name[@revision])")
    return download_model(*parsed)
