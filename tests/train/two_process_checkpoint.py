"""One of two JAX processes (4 CPU devices each, gloo collectives) saving and restoring a Checkpointer step.

Run by tests/train/test_multiprocess.py: ``python -m tests.train.two_process_checkpoint PROCESS_ID PORT CKPT_DIR``."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id: int, port: str, directory: str) -> None:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jax_distill.train.checkpoint import Checkpointer

    assert jax.process_count() == 2 and jax.device_count() == 8
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    full = np.arange(16, dtype=np.float32)
    x = jax.make_array_from_callback((16,), sharding, lambda idx: full[idx])
    own = {"process": process_id, "position": 100 + process_id}
    ck = Checkpointer(directory, every=1, keep=2, async_save=True)
    ck.save(3, {"x": x}, data_state=own, meta={"stage": "s"})
    ck.close()

    ck = Checkpointer(directory, every=1, keep=2)
    assert ck.latest_step() == 3
    state, data, meta = ck.restore(None, {"x": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=sharding)})
    assert data == own, (process_id, data)
    assert meta == {"stage": "s"}, meta
    np.testing.assert_array_equal(multihost_utils.process_allgather(state["x"], tiled=True), full)
    ck.close()
    print(f"process {process_id}: OK", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
