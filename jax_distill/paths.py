"""One path type for every run output: ``etils.epath`` (what Orbax and MaxText use).

A local path and a ``gs://bucket/prefix`` URI behave the same (mkdir, open, read_text, glob, iterdir). `pathlib`
would turn ``gs://b/run`` into a local folder ``gs:/b/run``; every writer in the package goes through
:func:`as_path` instead. Set ``EPATH_USE_TF=false`` to make epath use gcsfs (the package does not need
TensorFlow); gcsfs and tensorstore then honour ``STORAGE_EMULATOR_HOST`` / ``TENSORSTORE_GCS_HTTP_URL``.

Writers that cannot append to an object store (tensorboardX event files, safetensors) write into a local staging
folder and :func:`upload` copies the files into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath

PathLike = Union[str, os.PathLike]
_CHUNK = 16 * 2**20


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` is a URI (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """An ``epath.Path``: URIs as given, local paths made absolute."""
    p = os.fspath(path)
    return epath.Path(p if is_remote(p) else os.path.abspath(p))


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Stream one file between any two epath locations (local → gs://, gs:// → local, ...)."""
    with as_path(src).open("rb") as f, as_path(dst).open("wb") as g:
        shutil.copyfileobj(f, g, _CHUNK)


def upload(local_dir: PathLike, dest: PathLike, *, only: list[str] | None = None) -> None:
    """Copy every file under ``local_dir`` (or the relative paths in ``only``) to the same place under ``dest``."""
    root = Path(local_dir)
    files = [root / r for r in only] if only is not None else [p for p in sorted(root.rglob("*")) if p.is_file()]
    out = as_path(dest)
    for f in files:
        target = out / f.relative_to(root).as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        copy_file(f, target)


def download(src: PathLike, local_dir: PathLike) -> Path:
    """Copy the files of the folder ``src`` (recursively) into ``local_dir``; returns ``local_dir``."""
    out = Path(local_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in as_path(src).iterdir():  # epath refuses `**` globs on GCS: walk level by level
        if f.is_dir():
            download(f, out / f.name)
        else:
            copy_file(f, out / f.name)
    return out


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part: locally a temp file in
    the same folder renamed over ``path``; on an object store one upload (an object appears whole when finalized)."""
    out = as_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        out.write_bytes(data)
        return
    tmp = Path(os.fspath(out) + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.fspath(out))
