"""A pod rehearsed on this CPU: two JAX processes x 4 host devices, each running exactly the command that
`launch/tpu_vm.py run` sends to a worker (launch/rehearse.py), with the uninterrupted run's outputs in a
fake-gcs-server bucket. Checked: the same losses and parameters as one process x 8 devices on the same global batch;
SIGTERM to both stops them at one agreed step with one save; a killed worker takes the other down within 60 s; the
restarted pair finishes bit-identical to the uninterrupted run.

Two-process runs cost ~20-40 s each on 2 cores (start-up and compilation dominate), so the scenarios share runs: one
uninterrupted run (for the equivalence and as the bit-identical reference) and one chain SIGTERM -> resume + kill ->
resume. Stage 1 of tiny_cpu only, 10 steps."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "launch"))
import rehearse

STEPS = 10
FILES = {"stage1": 4, "heldout": 2}  # files per split: each of the 2 hosts reads its own share
OVERRIDES = [f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep=10", "train.log_every=1",
             "train.eval_batches=8", "distributed.heartbeat_timeout_s=10"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """tiny_cpu's stage 1 with its traces split into several files and every path absolute (workers run in their
    own home folders, as on a pod)."""
    root = tmp_path_factory.mktemp("pod_data")
    src = REPO_ROOT / "configs" / "tiny_data"
    for name, n in FILES.items():
        lines = (src / f"{name}.jsonl").read_text().splitlines()
        for i in range(n):
            (root / f"{name}-{i}.jsonl").write_text("\n".join(lines[i::n]) + "\n")
    cfg = yaml.safe_load((REPO_ROOT / "configs" / "tiny_cpu.yaml").read_text())
    stage = cfg["stages"][0]
    cfg["stages"] = [stage]
    stage["data"].update(paths=[str(root / "stage1-*.jsonl")], tokenizer=str(src / "tokenizer"))
    stage["eval_data"].update(paths=[str(root / "heldout-*.jsonl")], tokenizer=str(src / "tokenizer"))
    path = root / "pod.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(config: Path, out: str, workdir: Path, resume: bool = False):
    return rehearse.start_workers(str(config), [*OVERRIDES, f"output_dir={out}", f"checkpoint.dir={out}/ck"],
                                  resume=resume, processes=2, devices=4, workdir=workdir)


def _log(workdir: Path, i: int) -> str:
    return (workdir / f"worker-{i}" / "train.log").read_text(errors="replace")


def _wait(procs, workdir: Path, timeout: float = 240) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("workers timed out:\n" + _log(workdir, 0)[-3000:])
    return codes


def _steps(ck: Path) -> list[int]:
    return sorted(int(p.name) for p in ck.glob("*") if p.name.isdigit()) if ck.is_dir() else []


def _until_checkpoint(procs, ck: Path, after: int, workdir: Path) -> None:
    deadline = time.time() + 240
    while not [s for s in _steps(ck) if s > after]:
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            for q in procs:
                q.kill()
            pytest.fail(f"no checkpoint after step {after}:\n{_log(workdir, 0)[-3000:]}")
        time.sleep(0.05)


def _params(ck: str) -> dict:
    from flax import nnx

    from jax_distill.train.checkpoint import load_model_from_checkpoint

    flat = jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(load_model_from_checkpoint(ck))))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _metrics(out) -> tuple[dict[int, float], float]:
    from jax_distill.paths import as_path

    rows = [json.loads(x) for x in (as_path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, [r["eval_loss"] for r in rows if "eval_loss" in r][-1]


@pytest.fixture(scope="module")
def pod_run(config, gcs, tmp_path_factory) -> str:
    """The uninterrupted two-process run, every output in the emulator's bucket."""
    out = f"{gcs.make_bucket('jd-pod')}/run"
    workdir = tmp_path_factory.mktemp("pod_workers")
    procs = _start(config, out, workdir)
    codes = _wait(procs, workdir)
    assert codes == [0, 0], _log(workdir, 0)[-3000:] + _log(workdir, 1)[-3000:]
    for i in range(2):
        assert "distributed: explicit (coordinator 127.0.0.1:" in _log(workdir, i)
        assert f"process {i} of 2, 4 local / 8 global devices" in _log(workdir, i)
    return out


class _Shares:
    """One process standing in for two hosts: each batch is host 0's rows then host 1's, exactly the global batch
    that `make_array_from_process_local_data` assembles from the two processes. A finite (eval) pass is padded
    with empty rows on the host that ends first, as heldout_loss does."""

    def __init__(self, iterators):
        self.its = iterators

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it, None) for it in self.its]
        if all(p is None for p in parts):
            raise StopIteration
        like = next(p for p in parts if p is not None)
        parts = [p if p is not None else {k: np.zeros_like(v) for k, v in like.items()} for p in parts]
        return {k: np.concatenate([p[k] for p in parts]) for k in like}

    def get_state(self):
        return {"shares": [it.get_state() for it in self.its]}


def _two_host_shares(build):
    def wrapped(cfg, tok, *, batch_size, process_index=0, process_count=1, **kw):
        assert (process_index, process_count) == (0, 1)
        return _Shares([build(cfg, tok, batch_size=batch_size // 2, process_index=i, process_count=2, **kw)
                        for i in range(2)])
    return wrapped


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(pod_run, config, tmp_path, monkeypatch):
    """2 processes x 4 devices vs 1 process x 8 devices fed the same global batches: every step's loss and the
    held-out loss to 1e-5, the final parameters to 1e-5."""
    from jax_distill.config import load_config
    from jax_distill.train import loop
    from jax_distill.train.config import RunConfig

    monkeypatch.setattr(loop, "build_iterator", _two_host_shares(loop.build_iterator))
    monkeypatch.setattr(loop, "build_eval_iterator", _two_host_shares(loop.build_eval_iterator))
    ref = tmp_path / "ref"
    cfg = load_config(RunConfig, config, [*OVERRIDES, f"output_dir={ref}", f"checkpoint.dir={ref}/ck"])
    assert jax.device_count() == 8 and jax.process_count() == 1
    loop.train(cfg, progress=False)

    losses, eval_loss = _metrics(pod_run)
    ref_losses, ref_eval = _metrics(ref)
    assert sorted(losses) == list(range(1, STEPS + 1)) == sorted(ref_losses)
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [ref_losses[s] for s in sorted(losses)],
                               rtol=1e-5, atol=1e-5)
    assert eval_loss == pytest.approx(ref_eval, rel=1e-5, abs=1e-5)
    got, want = _params(f"{pod_run}/ck"), _params(str(ref / "ck"))
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_sigterm_then_lost_worker_then_resume_is_bit_identical(pod_run, config, tmp_path):
    """SIGTERM to both: they stop at the same step, save it once, exit 0. Resumed, then one worker SIGKILLed: the
    other exits non-zero within 60 s, naming the dead task. Both resumed again: the final checkpoint's parameters
    equal the uninterrupted run's bit for bit."""
    out, ck = tmp_path / "out", tmp_path / "out" / "ck"

    work = tmp_path / "term"
    procs = _start(config, str(out), work)
    _until_checkpoint(procs, ck, 1, work)
    for p in procs:
        p.send_signal(signal.SIGTERM)  # bash execs the worker command: the signal reaches jax-distill itself
    assert _wait(procs, work, 120) == [0, 0], _log(work, 0)[-3000:]
    stopped = [[int(m) for m in re.findall(r"preemption signal: checkpoint at step (\d+) written", _log(work, i))]
               for i in range(2)]
    assert len(stopped[0]) == 1 and stopped[0] == stopped[1], stopped  # one save, at one step, on both hosts
    step = stopped[0][0]
    assert 2 <= step <= STEPS - 4 and _steps(ck)[-1] == step  # room left for a checkpoint before the kill
    assert sorted(p.name for p in (ck / str(step) / "data").glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]

    work = tmp_path / "kill"
    procs = _start(config, str(out), work, resume=True)
    _until_checkpoint(procs, ck, step, work)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    code = _wait(procs[:1], work, 90)[0]
    assert code != 0 and time.time() - t0 < 60, (code, time.time() - t0)
    # The survivor names what happened: a collective that lost its peer, and/or the coordination service's verdict.
    assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\):\s*1|Gloo .* failed", _log(work, 0))
    assert _steps(ck)[-1] < STEPS

    work = tmp_path / "resume"
    assert _wait(_start(config, str(out), work, resume=True), work) == [0, 0], _log(work, 0)[-3000:]
    got, want = _params(str(ck)), _params(f"{pod_run}/ck")
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_host_shares_are_disjoint_and_cover_every_record_once_per_epoch(config):
    """Counted: each host's files, records and packed documents over one epoch; the union is the whole data."""
    from jax_distill.config import load_config
    from jax_distill.data.pipeline import build_iterator, load_documents
    from jax_distill.data.tokenize import load_tokenizer
    from jax_distill.train.config import RunConfig

    data = load_config(RunConfig, config, ["stages.0.data.num_epochs=1"]).stages[0].data
    tok = load_tokenizer(data.tokenizer)
    total = sum(1 for _ in (REPO_ROOT / "configs" / "tiny_data" / "stage1.jsonl").open())
    files, records, docs = [], 0, 0
    for i in range(2):
        it = build_iterator(data, tok, batch_size=4, seed=0, process_index=i, process_count=2)
        # documents in one pass: distinct segment ids per packed row
        docs += sum(len(set(row[row > 0].tolist())) for b in it for row in b["segment_ids"])
        report = it.report()
        files.append(set(report["per_file"]))
        records += report["records"]
        assert docs and report["kept"] == report["records"]
    assert not files[0] & files[1] and len(files[0] | files[1]) == FILES["stage1"]
    assert records == total and docs == total

    # One file for two hosts: each keeps every other record, both read the whole file.
    one = load_config(RunConfig, REPO_ROOT / "configs" / "tiny_cpu.yaml", ["stages.0.data.num_epochs=1"]).stages[0]
    one.data.paths = [str(REPO_ROOT / p) for p in one.data.paths]
    shares = []
    for i in range(2):
        docs_i, report = load_documents(one.data, tok, i, 2)
        assert report.read.records == report.read.kept == len(docs_i) == (total + 1 - i) // 2
        shares += [tuple(d["input_ids"].tolist()) for d in docs_i]
    everything, _ = load_documents(one.data, tok, 0, 1)
    assert sorted(shares) == sorted(tuple(d["input_ids"].tolist()) for d in everything)
