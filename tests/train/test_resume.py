"""Preemption and exact resume of the real `jax-distill train` process on configs/tiny_cpu.yaml, on local disk and
with every output in a GCS bucket (fake-gcs-server, the `gcs` fixture)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import REPO_ROOT

STEPS = 14  # per stage: the run has 28 steps, checkpoints every 2


def _cmd(out: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jax_distill.cli", "train", "--config", "configs/tiny_cpu.yaml", "--no-progress",
            f"train.steps={STEPS}", "checkpoint.every=2", f"output_dir={out}", f"checkpoint.dir={out}/ck",
            "checkpoint.keep=3", *extra]


def _env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    return env


def _weights(out: Path | str) -> dict:
    """The stage-2 export's tensors as raw bits (uint view: exact comparison whatever the dtype, bf16 included)."""
    from jax_distill.paths import as_path

    data = (as_path(out) / "stage2_distill" / "hf" / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    bits = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}
    return {k: np.frombuffer(data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=bits[v["dtype"]]).reshape(v["shape"]) for k, v in header.items()}


def _final_params(out: Path | str) -> dict:
    """The params of the run's newest training checkpoint (float32, as trained), restored through Orbax."""
    from flax import nnx

    from jax_distill.train.checkpoint import load_model_from_checkpoint

    return nnx.to_pure_dict(nnx.state(load_model_from_checkpoint(f"{out}/ck")))


def _latest(ck: Path | str) -> int:
    """Newest finalised checkpoint step (-1: none); on GCS a step is final once its commit_success.txt exists."""
    if "://" in str(ck):
        from jax_distill.data.sources import filesystem

        fs, path = filesystem(str(ck))
        fs.invalidate_cache()
        steps = [int(p.rsplit("/", 1)[-1]) for p in (fs.ls(path) if fs.exists(path) else [])
                 if p.rsplit("/", 1)[-1].isdigit() and fs.exists(f"{p}/commit_success.txt")]
        return max(steps, default=-1)
    ck = Path(ck)
    steps = [int(p.name) for p in ck.glob("*") if p.name.isdigit()] if ck.is_dir() else []
    return max(steps, default=-1)


def _run_until(out: Path | str, min_step: int, sig: int) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(out), cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while _latest(f"{out}/ck") < min_step:
        if proc.poll() is not None:
            pytest.fail(f"run ended before step {min_step}: {proc.stdout.read().decode()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for a checkpoint")
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc


@pytest.fixture(scope="module")
def uninterrupted_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    done = subprocess.run(_cmd(out), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_dir) -> dict:
    return _weights(uninterrupted_dir)


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


def test_gcs_outputs_sigkill_then_resume_from_bucket_is_bit_identical(gcs, uninterrupted_dir):
    """output_dir and checkpoint.dir in a bucket: killed mid-stage 2, resumed from gs://, the final checkpoint's params
    equal an uninterrupted local run's bit for bit; metrics, TensorBoard events, manifest and both exports are in the
    bucket, and the export loads from gs://."""
    from jax_distill.model.hf_io import load_pretrained
    from jax_distill.paths import as_path

    out = f"{gcs.make_bucket('jd-train-test')}/tiny"
    proc = _run_until(out, STEPS + 4, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    root = as_path(out)
    assert (root / "stage1_format" / "hf" / "config.json").exists()  # stage 1 finished before the kill
    assert not (root / "stage2_distill" / "hf" / "config.json").exists()
    assert not (REPO_ROOT / "gs:").exists()  # pathlib would have made a local "gs:/..." folder
    killed_lines = (root / "metrics.jsonl").read_text().splitlines()
    assert killed_lines and max(json.loads(x)["step"] for x in killed_lines) >= STEPS  # synced at checkpoints
    done = subprocess.run(_cmd(out, "--resume"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    got, want = _final_params(out), _final_params(uninterrupted_dir)
    flat_got, flat_want = jax.tree.leaves_with_path(got), jax.tree.leaves_with_path(want)
    assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
    for (k, a), (_, b) in zip(flat_got, flat_want):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(k))
    _same(_weights(out), _weights(uninterrupted_dir))  # the bf16 exports too

    steps = [json.loads(x)["step"] for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2 * STEPS and set(range(5, 2 * STEPS + 1, 5)) <= set(steps)
    events = [p for p in (root / "tb").iterdir() if "tfevents" in p.name]
    assert len(events) == 2 and all(len(p.read_bytes()) > 0 for p in events)  # one event file per process run
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "train" and manifest["config"]["output_dir"] == out
    assert [s["export_dir"] for s in manifest["extra"]["stages"]][-1] == f"{out}/stage2_distill/hf"
    export_cfg = json.loads((root / "stage2_distill" / "hf" / "config.json").read_text())
    assert export_cfg["torch_dtype"] == "bfloat16"
    model = load_pretrained(f"{out}/stage2_distill/hf")  # downloads through epath
    assert model.config.num_hidden_layers == 2
    from jax_distill.data.tokenize import load_tokenizer

    assert (root / "stage2_distill" / "hf" / "generation_config.json").exists()
    tok = load_tokenizer(f"{out}/stage2_distill/hf")  # the export's tokenizer files, read from the bucket
    local = load_tokenizer(str(REPO_ROOT / "configs" / "tiny_data" / "tokenizer"))
    assert tok.encode("12 + 345 = 357") == local.encode("12 + 345 = 357") and tok.sha256 == local.sha256
