#!/usr/bin/env python3
"""Cloud TPU VM lifecycle for a jax_distill run: create, set up every worker, run on all workers, stream logs,
resume after preemption, tear down. Every subcommand takes --dry-run, which prints the exact gcloud commands.

    python launch/tpu_vm.py create --name r1 --zone us-east5-a --accelerator-type v5p-128 --spot --dry-run
    python launch/tpu_vm.py setup  --name r1 --zone us-east5-a --package 'jax-distill[tpu] @ git+https://...'
    python launch/tpu_vm.py run    --name r1 --zone us-east5-a --config configs/qwen2.5-math-72b_v5p-128.yaml
    python launch/tpu_vm.py logs   --name r1 --zone us-east5-a
    python launch/tpu_vm.py resume --name r1 --zone us-east5-a --accelerator-type v5p-128 --spot --config ...
    python launch/tpu_vm.py delete --name r1 --zone us-east5-a

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
    return [c]


def cmd_setup(args) -> list[list[str]]:
    remote = "python3 -m pip install --upgrade pip && python3 -m pip install --upgrade " + shlex.quote(args.package)
    return [_ssh(args, remote)]


def _train(args, resume: bool) -> str:
    cfg = shlex.quote(args.config)
    log = shlex.quote(f"train-{args.name}.log")
    overrides = " ".join(shlex.quote(_safe_text(o, "override")) for o in args.overrides)
    run = f"jax-distill train --config {cfg} {overrides} --no-progress" + (" --resume" if resume else "")
    # Detached, so the ssh session may end; output goes to a log on each worker.
    return f"nohup {run} > {log} 2>&1 < /dev/null &"


def cmd_run(args) -> list[list[str]]:
    return [_ssh(args, _train(args, args.resume))]


def cmd_logs(args) -> list[list[str]]:
    return [_ssh(args, "tail -n 200 -f " + shlex.quote(f"train-{args.name}.log"), worker="0")]


def cmd_resume(args) -> list[list[str]]:
    """After a preemption the VM is gone (spot) or stopped: recreate it, reinstall, rerun with --resume.
    Checkpoints live in the config's checkpoint.dir (a gs:// path for preemptible runs), so nothing is lost."""
    return cmd_delete(args) + cmd_create(args) + cmd_setup(args) + [_ssh(args, _train(args, True))]


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
    p.add_argument("--config", help="run config path on the workers (run, resume)")
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
