"""Two local JAX processes (jax.distributed over 127.0.0.1, gloo CPU collectives): every process's data-iterator
state goes into each checkpoint (data/process_<i>-of-<n>.json) and comes back to that process."""

from tests.conftest import run_two_processes


def _run_pair(directory: str) -> None:
    run_two_processes("tests.train.two_process_checkpoint", [directory], 240, "two-process checkpoint test")


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
