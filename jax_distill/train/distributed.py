"""Joining a multi-process JAX job: which cluster this process is in, and `jax.distributed.initialize` for it.

Detected in this order (``distributed.mode: auto``; any other mode forces one):

* ``explicit``: a coordinator address, process count and process id, from the config (``distributed.*``) or the
  environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) — GPU nodes, the CPU rehearsal.
* ``slurm``: an ``srun`` task of a job with more than one task (``SLURM_NTASKS`` > 1); JAX's SLURM detector reads
  the coordinator (first node of ``SLURM_STEP_NODELIST``), count and rank from the SLURM variables.
* ``tpu``: a Cloud TPU VM (a TPU chip under /sys/bus/pci, or the GKE TPU variables): ``initialize()``
  with no arguments, and JAX reads the workers from the TPU metadata server. A single-host slice joins too (one
  process), which is what MaxText does.
* ``none``: one process; nothing to join.

Every process logs one line saying what was detected and what it became (process i of n, devices).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax

from jax_distill.train.config import DistributedConfig

log = logging.getLogger("jax_distill.distributed")

GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v3, v4, v5p, v5e, v6e, TPU7x; the list JAX's own TPU start-up checks). A Google vendor
# id alone is not enough: GCE's gVNIC network card is a Google PCI device too.
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


@dataclass(frozen=True)
class Plan:
    """How to join: ``kind`` (explicit / slurm / tpu / none), the keyword arguments for
    ``jax.distributed.initialize`` and the evidence, for the log line."""

    kind: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def tpu_vm_present(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """Whether this machine has a Cloud TPU chip on its PCI bus."""
    for dev in glob.glob(os.path.join(pci_root, "*")):
        try:
            with open(os.path.join(dev, "vendor")) as v, open(os.path.join(dev, "device")) as d:
                if v.read().strip() == GOOGLE_PCI_VENDOR and d.read().strip() in TPU_PCI_DEVICES:
                    return True
        except OSError:
            continue
    return False


def _explicit(cfg: DistributedConfig, env: Mapping[str, str]) -> dict[str, Any] | None:
    address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    count = cfg.num_processes if cfg.num_processes is not None else env.get("JAX_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else env.get("JAX_PROCESS_ID")
    if address is None and count is None and pid is None:
        return None
    missing = [name for name, v in (("coordinator_address / JAX_COORDINATOR_ADDRESS", address),
                                    ("num_processes / JAX_NUM_PROCESSES", count),
                                    ("process_id / JAX_PROCESS_ID", pid)) if v is None]
    if missing:
        raise ValueError(f"distributed: explicit settings are incomplete, missing {', '.join(missing)} (set all "
                         "three in the config's distributed section or the environment)")
    return {"coordinator_address": str(address), "num_processes": int(count), "process_id": int(pid)}


def detect(cfg: DistributedConfig, env: Mapping[str, str], tpu_present: bool) -> Plan:
    """The plan for this process, from the config, the environment and whether a TPU chip is present."""
    timeouts = {"initialization_timeout": cfg.initialization_timeout_s,
                "heartbeat_timeout_seconds": cfg.heartbeat_timeout_s}
    mode = cfg.mode
    if mode == "none":
        return Plan("none", reason="distributed.mode=none")
    explicit = _explicit(cfg, env) if mode in ("auto", "explicit") else None
    if mode == "explicit" and explicit is None:
        raise ValueError("distributed.mode=explicit needs coordinator_address, num_processes and process_id (config "
                         "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    if explicit is not None:
        return Plan("explicit", {**explicit, **timeouts},
                    f"coordinator {explicit['coordinator_address']}, process {explicit['process_id']} of "
                    f"{explicit['num_processes']}")
    slurm_tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    if mode == "slurm" or (mode == "auto" and slurm_tasks > 1 and "SLURM_PROCID" in env):
        kwargs: dict[str, Any] = {"cluster_detection_method": "slurm", **timeouts}
        why = f"SLURM job {env.get('SLURM_JOB_ID', '?')}, task {env.get('SLURM_PROCID', '?')} of {slurm_tasks}"
        # JAX's SLURM detector gives each task the one GPU numbered by its local rank (one task per GPU). With one
        # task per node (launch/slurm.sbatch) that task must see every GPU of the node.
        gpus = env.get("SLURM_GPUS_ON_NODE", "")
        if env.get("SLURM_NTASKS_PER_NODE") == "1" and gpus.isdigit():
            kwargs["local_device_ids"] = list(range(int(gpus)))
            why += f", one task per node: all {gpus} GPUs"
        return Plan("slurm", kwargs, why)
    gke = "TPU_WORKER_HOSTNAMES" in env or "TPU_PROCESS_ADDRESSES" in env
    if mode == "tpu" or (mode == "auto" and (tpu_present or gke)):
        why = "TPU chip on the PCI bus" if tpu_present else "TPU worker variables (GKE)"
        return Plan("tpu", dict(timeouts), f"Cloud TPU VM ({why}); workers from the TPU metadata")
    return Plan("none", reason="no cluster detected: one process")


def initialize(cfg: DistributedConfig, env: Mapping[str, str] | None = None) -> Plan:
    """Join the job this process belongs to (a no-op when already joined or when there is none). Logs the plan."""
    if jax.distributed.is_initialized():
        return Plan("preinitialized", reason="jax.distributed was initialized before train")
    plan = detect(cfg, os.environ if env is None else env, tpu_vm_present())
    if plan.kind != "none":
        jax.distributed.initialize(**plan.kwargs)
    log.info("distributed: %s (%s): process %d of %d, %d local / %d global devices", plan.kind, plan.reason,
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return plan
