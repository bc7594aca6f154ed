"""Which cluster a process is in (train/distributed.py: detect), from config, environment and TPU presence."""

import pytest

from jax_distill.train.config import DistributedConfig
from jax_distill.train.distributed import detect, tpu_vm_present

SLURM = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
         "SLURM_STEP_NODELIST": "gpu[1-4]", "SLURM_NODELIST": "gpu[1-4]"}


def test_explicit_settings_from_env_or_config_win():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", **SLURM}
    plan = detect(DistributedConfig(heartbeat_timeout_s=10), env, tpu_present=True)
    assert plan.kind == "explicit"
    assert plan.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                           "initialization_timeout": 300, "heartbeat_timeout_seconds": 10}
    cfg = DistributedConfig(coordinator_address="h:9", num_processes=4, process_id=3)
    assert detect(cfg, env, False).kwargs["process_id"] == 3  # the config beats the environment


def test_incomplete_explicit_settings_name_what_is_missing():
    with pytest.raises(ValueError, match="num_processes / JAX_NUM_PROCESSES"):
        detect(DistributedConfig(), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, False)
    with pytest.raises(ValueError, match="mode=explicit needs"):
        detect(DistributedConfig(mode="explicit"), {}, False)


def test_slurm_tpu_and_single_process():
    assert detect(DistributedConfig(), SLURM, False).kwargs["cluster_detection_method"] == "slurm"
    assert "local_device_ids" not in detect(DistributedConfig(), SLURM, False).kwargs  # JAX: one GPU per task
    one_per_node = {**SLURM, "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "8"}  # launch/slurm.sbatch
    assert detect(DistributedConfig(), one_per_node, False).kwargs["local_device_ids"] == list(range(8))
    assert detect(DistributedConfig(), {**SLURM, "SLURM_NTASKS": "1"}, False).kind == "none"
    tpu = detect(DistributedConfig(), {}, tpu_present=True)
    assert tpu.kind == "tpu" and "coordinator_address" not in tpu.kwargs  # JAX asks the TPU metadata server
    assert detect(DistributedConfig(), {"TPU_WORKER_HOSTNAMES": "a,b"}, False).kind == "tpu"  # GKE
    assert detect(DistributedConfig(), {}, False).kind == "none"
    assert detect(DistributedConfig(mode="none"), SLURM, True).kind == "none"
    assert detect(DistributedConfig(mode="tpu"), {}, False).kind == "tpu"


def _pci(root, slot, vendor, device):
    (root / slot).mkdir()
    (root / slot / "vendor").write_text(vendor + "\n")
    (root / slot / "device").write_text(device + "\n")


def test_tpu_vm_present_reads_pci_ids(tmp_path):
    _pci(tmp_path, "0000:00:04.0", "0x8086", "0x1237")
    _pci(tmp_path, "0000:00:05.0", "0x1ae0", "0x0042")  # gVNIC: a Google device on every GCE VM, not a TPU
    assert not tpu_vm_present(str(tmp_path))
    _pci(tmp_path, "0000:00:06.0", "0x1ae0", "0x0062")  # v5p
    assert tpu_vm_present(str(tmp_path))
