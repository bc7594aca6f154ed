"""`jax-distill` command line: one subcommand per job, each handed off to the module that owns it.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import
their heavy dependencies (jax, transformers, ...) inside ``run`` so that ``jax-distill --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from jax_distill.errors import EXIT_USAGE, UserError, debug_enabled, one_line

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

# Subcommands owned by a later layer than their command's module (`data distill` samples with `sample/` and reads the
# eval sets of `eval/`, which `data/` may not import): added to that command's subparsers here.
SUBCOMMANDS: dict[str, dict[str, str]] = {
    "data": {"distill": "jax_distill.distill.cli"},
}

# One example per command, shown under its --help.
EXAMPLES: dict[str, str] = {
    "demo": "jax-distill demo --out runs/demo --stage1-steps 20 --stage2-steps 40",
    "data": "jax-distill data stats --data traces.jsonl --tokenizer qwen.tiktoken --seq-len 4096",
    "convert": "jax-distill convert --from runs/tiny/stage2/hf --to /tmp/orbax",
    "train": "jax-distill train --config configs/tiny_cpu.yaml train.steps=50 --stage all",
    "eval": "jax-distill eval --model runs/tiny/stage2/hf --benchmark aime24 --data aime24.jsonl --out runs/eval",
    "grade": "jax-distill grade --benchmark aime24 --data aime24.jsonl --predictions pred.jsonl",
    "plan": "jax-distill plan --model qwen2.5-math-72b --topology v5p-128 --seq-len 16384",
    "cost": "jax-distill cost --config configs/qwen2.5-math-72b_v5p-128.yaml --mfu 0.4",
}

# Library exceptions that mean "bad input", by class name (so that optional dependencies need not be imported).
_EXPECTED_NAMES = {
    "ConfigError", "BadRecordError", "UnsupportedConfigError", "HFValidationError", "RepositoryNotFoundError",
    "RevisionNotFoundError", "EntryNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
    "DatasetNotFoundError", "GatedRepoError", "EmptyDatasetError",
}
_PACKAGE = str(Path(__file__).resolve().parent)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what, and where to look) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (unless its help already does) and keeps the example epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or default is None or default is False
                or default == argparse.SUPPRESS
                or action.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE)):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="jax-distill", formatter_class=HelpFormatter,
        epilog="Errors print one line (what, where, the fix) and exit 2; --debug or JAX_DISTILL_DEBUG=1 shows the "
               "traceback.",
        description=(
            "Two-stage SFT distillation of Qwen2.5 students in JAX (O1 Replication Journey, part 2): "
            "data pipelines, sharded training, sampling, AIME/MATH evaluation, TPU plans and cost reports."
        ),
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: JAX_DISTILL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=HelpFormatter, epilog=f"example:\n  {EXAMPLES[name]}" if name in EXAMPLES
                           else None)
        module.add_arguments(p)
        for action in p._actions:  # an option without help text still shows its default
            if action.help is None and action.option_strings and action.default is not None \
                    and action.default is not False:
                action.help = "(default: %(default)s)"
        p.set_defaults(_run=module.run)
        for sub_name, sub_module_name in SUBCOMMANDS.get(name, {}).items():
            sub_module = importlib.import_module(sub_module_name)
            subparsers = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
            sp = subparsers.add_parser(sub_name, help=sub_module.HELP, description=sub_module.DESCRIPTION,
                                       formatter_class=HelpFormatter)
            sub_module.add_arguments(sp)
            sp.set_defaults(_run=sub_module.run)  # a subparser's defaults win over its parent's
    return parser


def _is_expected(err: BaseException) -> bool:
    """Whether ``err`` is bad input (reported as one line) rather than a bug (reported with its traceback)."""
    if isinstance(err, (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if any(c.__name__ in _EXPECTED_NAMES for c in type(err).__mro__):
        return True
    if type(err) is ValueError:  # a validation error raised by this package, not one from deep inside a library
        tb = traceback.extract_tb(err.__traceback__)
        return bool(tb) and str(Path(tb[-1].filename).resolve()).startswith(_PACKAGE)
    return False


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        what = {FileNotFoundError: "not found", IsADirectoryError: "is a directory, expected a file",
                NotADirectoryError: "is not a directory", PermissionError: "permission denied"}.get(type(err),
                                                                                                     err.strerror)
        return f"{err.filename}: {what}"
    return one_line(err) or type(err).__name__


def _default_platform() -> None:
    """No TPU or GPU on this host: pin jax to the CPU before it is imported, so that installed libtpu/CUDA plugins do
    not print their start-up noise (an explicit JAX_PLATFORMS always wins)."""
    if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules:
        return
    from jax_distill.hardware import accelerator_present

    if not accelerator_present():
        os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    if "--debug" in argv:  # global, accepted anywhere on the line
        argv.remove("--debug")
        debug = True
    prog = "jax-distill" + (f" {argv[0]}" if argv and argv[0] in COMMANDS else "")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error, already printed as one line
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    _default_platform()
    try:
        return int(args._run(args) or 0)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        if debug:
            raise
        print(f"{prog}: error: {one_line(exit_.code)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not _is_expected(err):
            raise
        print(f"{prog}: error: {_message(err)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
