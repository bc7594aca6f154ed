"""Trace files: local paths and globs, gs:// through gcsfs, any fsspec URL; listed deterministically, split by host."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import fsspec

_EXTS = (".jsonl", ".json", ".parquet", ".jsonl.gz")


def gcs_storage_options() -> dict[str, Any]:
    """gcsfs options. Against an emulator (STORAGE_EMULATOR_HOST) use anonymous access and skip the gRPC
    bucket-type probe, which otherwise waits about a minute before falling back to JSON."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    opts: dict[str, Any] = {"retries": 6}
    if host:
        opts.update(token="anon", endpoint_url=host if host.startswith("http") else f"http://{host}")
    return opts


_GCS_CHECKED: set[str] = set()


def _check_gcs_credentials(url: str) -> None:
    """Fail in a second, with the fix, instead of gcsfs's retries against a metadata server that is not there."""
    from jax_distill.errors import UserError, gcs_credentials_problem

    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if bucket in _GCS_CHECKED:
        return
    problem = gcs_credentials_problem(url)
    if problem:
        raise UserError(problem)
    _GCS_CHECKED.add(bucket)


def filesystem(url: str):
    """(fsspec filesystem, path within it) for a local path or URL."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs >= 2025 defaults to ExtendedGcsFileSystem, which first asks the bucket's layout over gRPC; an
        # emulator only speaks the JSON API, so that probe times out (~60 s) on every bucket. The JSON-only class is
        # the supported path (equivalent to GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false).
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(**gcs_storage_options())
        return fs, fs._strip_protocol(url)
    if protocol in ("gs", "gcs"):
        _check_gcs_credentials(url)
    opts = gcs_storage_options() if protocol in ("gs", "gcs") else {}
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path


def list_files(paths: list[str]) -> list[str]:
    """Expand files, directories and globs into a sorted, de-duplicated list of URLs/paths.

    Raises FileNotFoundError naming the entry when a path, bucket or glob matches nothing (never an empty dataset)."""
    if not paths:
        raise ValueError("data.paths is empty: give trace files, globs or gs:// URIs")
    out: list[str] = []
    for entry in paths:
        fs, path = filesystem(entry)
        prefix = entry.split("://", 1)[0] + "://" if "://" in entry else ""
        try:
            if any(ch in path for ch in "*?["):
                found = sorted(fs.glob(path))
            elif fs.isdir(path):
                found = sorted(p for p in fs.find(path) if p.endswith(_EXTS))
            elif fs.exists(path):
                found = [path]
            else:
                raise FileNotFoundError(f"data path not found: {entry}")
        except FileNotFoundError as err:
            if str(err).startswith("data path"):
                raise
            raise FileNotFoundError(f"data path not found: {entry} (bucket or folder missing: {err})") from None
        found = [p for p in found if not fs.isdir(p)]
        if not found:
            raise FileNotFoundError(f"data path matched no files: {entry}")
        out += [prefix + p if prefix and not p.startswith(prefix) else p for p in found]
    return sorted(dict.fromkeys(out))


def host_share(files: list[str], process_index: int, process_count: int) -> list[str]:
    """Files for this host: round-robin over the sorted list (every host gets a disjoint, deterministic share)."""
    if process_count > 1 and len(files) < process_count:
        raise ValueError(f"{len(files)} data files for {process_count} hosts: each host needs at least one file; "
                         "split the traces into more files")
    return files[process_index::process_count]


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data = f.read()
    if url.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    return data


def sha256_file(url: str) -> str:
    """Streaming sha256 of a local path, gs:// URI or any fsspec URL (the bytes as stored)."""
    fs, path = filesystem(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_sources(paths: list[str]) -> list[dict[str, Any]]:
    """[{path, sha256, bytes}] for every file the paths expand to (for run manifests)."""
    out = []
    for url in list_files(paths):
        data = read_bytes(url)
        out.append({"path": url, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    return out
