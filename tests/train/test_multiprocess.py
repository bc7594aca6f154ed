"""Two local JAX processes (jax.distributed over 127.0.0.1, gloo CPU collectives): every process's data-iterator
state goes into each checkpoint (data/process_<i>-of-<n>.json) and comes back to that process."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.data.gcs_emulator import free_port


def _run_pair(directory: str) -> None:
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.train.two_process_checkpoint", str(i), port, directory],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process checkpoint test timed out")
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"process {i}: OK" in out, out[-4000:]


def test_two_processes_keep_their_own_data_state_local(tmp_path):
    _run_pair(str(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "ck" / "3" / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]


def test_two_processes_keep_their_own_data_state_on_gcs(gcs):
    from jax_distill.paths import as_path

    ck = f"{gcs.make_bucket('jd-two-process')}/ck"
    _run_pair(ck)
    assert sorted(p.name for p in (as_path(ck) / "3" / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
