"""The run manifest: what a reader needs to reproduce or audit a run (see docs/transparency.md).

Written as OUT/manifest.json by every `train`, `eval` and `demo` run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from jax_distill.config import to_dict
from jax_distill.paths import as_path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "tokenizers", "numpy",
            "tiktoken", "math-verify", "gcsfs", "torch", "libtpu")


def code_version() -> dict[str, Any]:
    """Git commit (and whether the tree had uncommitted changes) of this checkout, else the package version."""
    root = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {"package_version": metadata.version("jax-distill")}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        out.update(git_commit=commit, git_dirty=dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _devices() -> dict[str, Any]:
    import jax

    devs = jax.devices()
    return {"platform": devs[0].platform, "device_kind": devs[0].device_kind, "device_count": len(devs),
            "process_count": jax.process_count(), "process_index": jax.process_index()}


def _plain(obj: Any) -> Any:
    return to_dict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


def write_manifest(out_dir: str | Path, *, kind: str, config: Any = None, data_files: list[dict] | None = None,
                   tokenizer: Any = None, seeds: dict | None = None, mesh: dict | None = None,
                   sampling: dict | None = None, budgets: list[int] | None = None,
                   extra: dict | None = None) -> Path:
    """Write OUT/manifest.json (valid JSON, stable key order; OUT local or gs://) and return its path. Only
    process 0 writes; the others return the path."""
    manifest = {
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "code": code_version(),
        "packages": package_versions(),
        "devices": _devices(),
        "mesh": mesh,
        "config": _plain(config),
        "data_files": data_files or [],
        "tokenizer": tokenizer,
        "seeds": seeds,
        "sampling": sampling,
        "token_budgets": budgets,
        "extra": extra or {},
    }
    out = as_path(out_dir)
    path = out / "manifest.json"
    if manifest["devices"].get("process_index", 0) != 0:
        return path
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path
