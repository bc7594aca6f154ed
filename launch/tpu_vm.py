#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for a jax_distill run: create, set up every worker, run on all workers, stream logs,
resume after preemption, tear down. Every subcommand takes --dry-run, which prints the exact gcloud commands.

    python launch/tpu_vm.py create --name r1 --zone us-east5-a --accelerator-type v5p-128 --spot --dry-run
    python launch/tpu_vm.py setup  --name r1 --zone us-east5-a --package 'jax-distill[tpu] @ git+https://...'
    python launch/tpu_vm.py run    --name r1 --zone us-east5-a --config configs/qwen2.5-math-72b_v5p-128.yaml
    python launch/tpu_vm.py run    --name r1 --zone us-east5-a --config gs://BUCKET/runs/r1/config.yaml
    python launch/tpu_vm.py logs   --name r1 --zone us-east5-a
    python launch/tpu_vm.py resume --name r1 --zone us-east5-a --accelerator-type v5p-128 --spot --config ...
    python launch/tpu_vm.py delete --name r1 --zone us-east5-a

`setup` installs uv and, with it, a standalone CPython 3.11 and a virtual environment (``jax-distill-venv`` in each
worker's home) holding the package: the stock TPU runtime images ship an older system Python than the package needs.
`run` ships a local config to every worker (``scp --worker=all`` to ``jax-distill-run.yaml``) or passes a ``gs://``
config through (every worker reads the same object). Each worker then runs :func:`worker_command`, which
``launch/rehearse.py`` runs as local processes to rehearse a pod on one machine. `create --data-disk` attaches a
read-only persistent disk (e.g. one holding the 72B weights) to every worker, and `setup --mount-data-disk` mounts it
at /mnt/disks/models, where the shipped configs put ``model.weights``: every host reads them from a local disk.

Names and arguments are validated against strict patterns and every argument is shell-quoted, so nothing a user
passes can inject shell code, locally or on the workers.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")  # GCE resource names
ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
ACCEL = re.compile(r"^(v5p|v5litepod|v6e|v4|v5e)-[0-9]+$")
VERSION = re.compile(r"^[A-Za-z0-9._-]+$")
PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
DISK = re.compile(r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/(zones|regions)/[a-z0-9-]+/disks/[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
PYTHON = "3.11"  # the package needs >= 3.11; uv installs it next to whatever the runtime image ships
VENV = "jax-distill-venv"  # in each worker's home (the ssh command's working directory)
UV = "$HOME/.local/bin/uv"  # where uv's installer puts it
REMOTE_CONFIG = "jax-distill-run.yaml"  # a local --config is copied here on every worker
DATA_MOUNT = "/mnt/disks/models"  # where the shipped configs expect model.weights
# Runtime images per generation (override with --version).
RUNTIME = {"v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
           "v6e": "v2-alpha-tpuv6e", "v4": "tpu-ubuntu2204-base"}


def _check(value: str | None, pattern: re.Pattern, what: str) -> str | None:
    if value is not None and not pattern.fullmatch(value):
        raise SystemExit(f"invalid {what} {value!r} (must match {pattern.pattern})")
    return value


def _safe_text(value: str, what: str) -> str:
    if any(c in value for c in "\n\r\x00"):
        raise SystemExit(f"invalid {what}: control characters")
    return value


def _base(args) -> list[str]:
    extra = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
    return extra


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_base(args), f"--worker={worker}",
            "--command", remote]


def cmd_create(args) -> list[list[str]]:
    gen = args.accelerator_type.split("-")[0]
    version = args.version or RUNTIME[gen]
    if args.queued:
        c = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, "--node-id", args.name,
             *_base(args), "--accelerator-type", args.accelerator_type, "--runtime-version", version]
    else:
        c = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_base(args), "--accelerator-type",
             args.accelerator_type, "--version", version]
    if args.spot:
        c.append("--spot")
    if args.data_disk:
        c += ["--data-disk", f"source={args.data_disk},mode=read-only"]
    return [c]


def setup_script(package: str, mount_data_disk: bool = False) -> str:
    """The shell each worker runs to get a Python that fits the package: uv, CPython 3.11, a venv, the package."""
    steps = ["curl -LsSf https://astral.sh/uv/install.sh | sh",
             f"{UV} python install {PYTHON}",
             f"{UV} venv --allow-existing --python {PYTHON} {VENV}",
             f"{UV} pip install --python {VENV}/bin/python --upgrade {shlex.quote(package)}",
             f"{VENV}/bin/jax-distill --help > /dev/null"]
    if mount_data_disk:  # the read-only disk from `create --data-disk` (google-persistent-disk-1 on every worker)
        steps += [f"sudo mkdir -p {DATA_MOUNT}",
                  f"sudo mount -o ro,noload /dev/disk/by-id/google-persistent-disk-1 {DATA_MOUNT}"]
    return " && ".join(steps)


def cmd_setup(args) -> list[list[str]]:
    return [_ssh(args, setup_script(args.package, args.mount_data_disk))]


def remote_config(config: str) -> str:
    """The config path the workers read: a gs:// URI as given, a local file under its shipped name."""
    return config if config.startswith("gs://") else REMOTE_CONFIG


def worker_command(config: str, overrides: list[str], resume: bool, venv: str = VENV) -> str:
    """The training command every worker runs (the same on each; `jax.distributed` finds the worker's rank)."""
    quoted = " ".join(shlex.quote(_safe_text(o, "override")) for o in overrides)
    run = f"{shlex.quote(venv + '/bin/jax-distill')} train --config {shlex.quote(config)}"
    return (run + (f" {quoted}" if quoted else "") + " --no-progress" + (" --resume" if resume else ""))


def _ship_config(args) -> list[list[str]]:
    if args.config.startswith("gs://"):
        return []
    return [["gcloud", "compute", "tpus", "tpu-vm", "scp", args.config, f"{args.name}:{REMOTE_CONFIG}",
             *_base(args), "--worker=all"]]


def _train(args, resume: bool) -> str:
    log = shlex.quote(f"train-{args.name}.log")
    # Detached, so the ssh session may end; output goes to a log on each worker.
    return f"nohup {worker_command(remote_config(args.config), args.overrides, resume)} > {log} 2>&1 < /dev/null &"


def cmd_run(args) -> list[list[str]]:
    return _ship_config(args) + [_ssh(args, _train(args, args.resume))]


def cmd_logs(args) -> list[list[str]]:
    return [_ssh(args, "tail -n 200 -f " + shlex.quote(f"train-{args.name}.log"), worker="0")]


def cmd_resume(args) -> list[list[str]]:
    """After a preemption the VM is gone (spot) or stopped: recreate it, reinstall, rerun with --resume.
    Checkpoints live in the config's checkpoint.dir (a gs:// path for preemptible runs), so nothing is lost."""
    return cmd_delete(args) + cmd_create(args) + cmd_setup(args) + _ship_config(args) + [_ssh(args, _train(args, True))]


def cmd_delete(args) -> list[list[str]]:
    if args.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_base(args), "--force",
                 "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_base(args), "--quiet"]]


COMMANDS = {"create": cmd_create, "setup": cmd_setup, "run": cmd_run, "logs": cmd_logs, "resume": cmd_resume,
            "delete": cmd_delete}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--name", required=True, help="TPU VM / queued resource name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project")
    p.add_argument("--accelerator-type", help="e.g. v5p-128, v6e-64, v5litepod-32 (create, resume)")
    p.add_argument("--version", help="TPU runtime image (default by generation)")
    p.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
    p.add_argument("--queued", action="store_true", help="use a queued resource instead of a plain TPU VM")
    p.add_argument("--package", default="jax-distill[tpu]", help="pip requirement installed on every worker")
    p.add_argument("--config", help="run config: a local file (copied to every worker) or gs://... (run, resume)")
    p.add_argument("--data-disk", help="create: attach this persistent disk read-only to every worker "
                                       "(projects/P/zones/Z/disks/NAME, e.g. holding the weights)")
    p.add_argument("--mount-data-disk", action="store_true",
                   help=f"setup: mount the --data-disk read-only at {DATA_MOUNT} on every worker")
    p.add_argument("--resume", action="store_true", help="run: continue from the latest checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for run/resume")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    _check(args.name, NAME, "name")
    _check(args.zone, ZONE, "zone")
    _check(args.project, PROJECT, "project")
    _check(args.accelerator_type, ACCEL, "accelerator type")
    _check(args.version, VERSION, "runtime version")
    _safe_text(args.package, "package")
    _check(args.data_disk, DISK, "data disk")
    if args.command in ("create", "resume") and not args.accelerator_type:
        raise SystemExit(f"{args.command} needs --accelerator-type")
    if args.command in ("run", "resume"):
        if not args.config:
            raise SystemExit(f"{args.command} needs --config")
        _safe_text(args.config, "config path")
    for c in COMMANDS[args.command](args):
        print(shlex.join(c), flush=True)
        if not args.dry_run:
            done = subprocess.run(c)
            if done.returncode and not (args.command == "resume" and "delete" in c):
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
