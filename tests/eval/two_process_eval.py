"""One of two JAX processes (2 CPU devices each, gloo collectives) running `jax-distill eval` on a shared
(data=2, tensor=2) decode mesh: rows of one process, kv heads / heads / MLP split across the processes' devices.

Run by tests/eval/test_sharded_eval.py: ``python -m tests.eval.two_process_eval PROCESS_ID PORT OUT -- EVAL_ARGS...``."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: str, out: str, eval_args: list[str]) -> None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from jax_distill.cli import main as cli

    assert jax.process_count() == 2 and jax.device_count() == 4 and len(jax.local_devices()) == 2
    assert cli(["eval", *eval_args, "--mesh", "data=2,tensor=2", "--out", out]) == 0
    print(f"process {process_id}: OK", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[5:])
