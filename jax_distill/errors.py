"""Errors a user can fix: one type the CLI reports as one line (what, where, the fix), with no traceback.

Library code raises :class:`UserError` (or ``ConfigError``, ``FileNotFoundError``, ...) with a message that names the
culprit (file:line, config key or flag) and, where it helps, the fix. ``jax_distill.cli.main`` turns these into one line
on stderr and exit status 2; ``--debug`` or ``JAX_DISTILL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

EXIT_USAGE = 2


class UserError(Exception):
    """An expected failure caused by input: bad flags, a missing file, no network. ``fix`` is appended to the
    message as "; fix: ..." (omit it when the message already says what to do)."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message + (f"; {fix}" if fix else ""))


def debug_enabled() -> bool:
    return os.environ.get("JAX_DISTILL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: object) -> str:
    """A message on one line: newlines folded into '; ', runs of spaces collapsed."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(" ".join(p.split()) for p in parts)


def reachable(url: str, timeout: float = 2.0) -> str | None:
    """None when a TCP connection to ``url``'s host and port opens within ``timeout`` s, else the reason."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot reach {host}:{port} ({err.strerror or err})"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline_flag() -> str | None:
    """The environment variable that puts the hub in offline mode, if one is set."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def gcs_credentials_problem(url: str) -> str | None:
    """Why ``url`` (gs://) cannot be read for lack of credentials, or None when some credential source exists:
    GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default file, or a reachable metadata server (1 s probe)."""
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        return None if os.path.isfile(path) else f"GOOGLE_APPLICATION_CREDENTIALS={path}: file not found"
    config = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    if os.path.isfile(os.path.join(config, "application_default_credentials.json")):
        return None
    if reachable("http://" + os.environ.get("GCE_METADATA_HOST", "169.254.169.254"), timeout=1.0) is None:
        return None
    return (f"no GCS credentials for {url}: set GOOGLE_APPLICATION_CREDENTIALS or run "
            "gcloud auth application-default login")
