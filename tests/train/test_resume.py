"""Preemption and exact resume of the real `jax-distill train` process on configs/tiny_cpu.yaml."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

STEPS = 14  # per stage: the run has 28 steps, checkpoints every 2


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jax_distill.cli", "train", "--config", "configs/tiny_cpu.yaml", "--no-progress",
            f"train.steps={STEPS}", "checkpoint.every=2", f"output_dir={out}", f"checkpoint.dir={out}/ck",
            "checkpoint.keep=3", *extra]


def _env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    return env


def _weights(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(out / "stage2_distill" / "hf" / "model.safetensors")


def _latest(ck: Path) -> int:
    steps = [int(p.name) for p in ck.glob("*") if p.name.isdigit()] if ck.is_dir() else []
    return max(steps, default=-1)


def _run_until(out: Path, min_step: int, sig: int) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(out), cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while _latest(out / "ck") < min_step:
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {min_step}: {proc.stdout.read().decode()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for a checkpoint")
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full")
    done = subprocess.run(_cmd(out), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _weights(out)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sigkill_then_resume_is_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    proc = _run_until(out, STEPS + 4, signal.SIGKILL)  # killed in the middle of stage 2
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "stage2_distill" / "hf").exists()
    done = subprocess.run(_cmd(out, "--resume"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _same(_weights(out), uninterrupted)


def test_sigterm_checkpoints_exits_zero_and_resumes(tmp_path, uninterrupted):
    out = tmp_path / "term"
    proc = _run_until(out, 5, signal.SIGTERM)  # during stage 1
    t0 = time.time()
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stdout.read().decode()[-3000:]
    assert time.time() - t0 < 30  # well inside a Cloud TPU preemption's grace period
    stopped = _latest(out / "ck")
    assert 5 <= stopped < 2 * STEPS
    done = subprocess.run(_cmd(out, "--resume"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _same(_weights(out), uninterrupted)
