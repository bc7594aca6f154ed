"""`jax-distill` command line: one subcommand per job, each handed off to the module that owns it.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import
their heavy dependencies (jax, transformers, ...) inside ``run`` so that ``jax-distill --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help: the recipe's data flow, then the tools around it.
COMMANDS: dict[str, str] = {
    "demo": "jax_distill.demo.cli",
    "data": "jax_distill.data.cli",
    "convert": "jax_distill.train.convert_cli",
    "train": "jax_distill.train.cli",
    "eval": "jax_distill.eval.eval_cli",
    "grade": "jax_distill.eval.grade_cli",
    "plan": "jax_distill.plan.plan_cli",
    "cost": "jax_distill.plan.cost_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax-distill",
        description=(
            "Two-stage SFT distillation of Qwen2.5 students in JAX (O1 Replication Journey, part 2): "
            "data pipelines, sharded training, sampling, AIME/MATH evaluation, TPU plans and cost reports."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
