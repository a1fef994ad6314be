"""The ``samhess`` command: ``run``, ``compare``, ``analyze``, ``report`` and ``experiment``.

The command line only parses, calls :mod:`samhess.experiments` and prints. A mistake a user can
make (an unknown name, a bad value, missing data files, a corrupt checkpoint, an output
directory holding another run or written by another process, a run that diverged) raises a
:class:`~samhess.errors.SamhessError`, which becomes one line on stderr and exit status 2, as
does an ``OSError`` on a file or directory (a full disk, a missing permission). Any other
exception is a bug and keeps its traceback; set ``SAMHESS_DEBUG=1`` to see the traceback behind
a one-line error too. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from samhess.errors import SamhessError, UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (argparse prints the whole usage first), and without
    prefix matching, so ``compare --seed 3`` is an error rather than ``--seeds 3``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text or type(exc).__name__


def _real_list(text: str) -> list[float]:
    """A comma-separated list of numbers (``0.001,0.01,0.1``)."""
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid list of numbers: {text!r}") from None


def _add_setting_flags(parser: argparse.ArgumentParser, settings: Sequence[Any],
                       groups: Sequence[str], default_text: Any) -> None:
    """One flag per declared setting (:mod:`samhess.experiments.settings`), under its group's
    heading; an unset flag stays out of the namespace."""
    from samhess.experiments.settings import ValueKind

    types = {ValueKind.INT: int, ValueKind.REAL: float, ValueKind.STR: str,
             ValueKind.REALS: _real_list}
    for group in groups:
        members = [s for s in settings if s.group == group]
        if not members:
            continue
        arguments = parser.add_argument_group(group)
        for setting in members:
            text = f"{setting.help} (default {default_text(setting)})"
            if setting.kind is ValueKind.BOOL:
                arguments.add_argument(setting.flag, action="store_const", const=True,
                                       default=argparse.SUPPRESS, help=text)
            else:
                arguments.add_argument(setting.flag, type=types[setting.kind],
                                       metavar=setting.metavar, help=text,
                                       default=argparse.SUPPRESS)


def _add_file_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    out = parser.add_argument_group("files")
    out.add_argument("--config", metavar="FILE", help="TOML or YAML file of settings; flags win")
    out.add_argument("--out", metavar="DIR",
                     help="output directory (overrides out in --config)")
    out.add_argument("--resume", action="store_true",
                     help=f"continue the {what} in --out from its last checkpoint")
    out.add_argument("--force", action="store_true",
                     help=f"replace the {what} files already in --out")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads_flag(out)


def _add_task_flags(parser: argparse.ArgumentParser, *, command: str) -> None:
    """The flags of ``run`` or ``compare``."""
    from samhess.experiments.config import (
        COMPARE_SETTINGS, GROUP_ORDER, RUN_SETTINGS, default_in_words,
    )
    from samhess.experiments.settings import Scope

    scopes = (Scope.BOTH, Scope.RUN if command == "run" else Scope.COMPARE)
    settings = [s for s in (*COMPARE_SETTINGS, *RUN_SETTINGS.values()) if s.scope in scopes]
    _add_setting_flags(parser, settings, GROUP_ORDER, default_in_words)
    _add_file_flags(parser, what="run")


def _add_threads_flag(group) -> None:
    group.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch intra-op threads, at most the CPUs here (default 1: the "
                       "default models are small)")


def _add_strict_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--strict", action="store_true",
                        help=f"exit with status 2 when the {what} is unfinished (the output is "
                        "written and labelled either way)")


_NOT_SETTINGS = {"command", "handler", "config", "out", "resume", "force", "quiet", "optimizers",
                 "seeds", "run_dir", "directory", "threads", "strict", "experiment_name"}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user actually gave, as config keys."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


class _HelpFormatter(argparse.HelpFormatter):
    """Keeps the epilog's lines (the optimizer list) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


def _optimizer_list() -> str:
    """The registered optimizers, one line each, for the end of ``--help``."""
    from samhess.experiments.optimizer_kinds import OPTIMIZER_KINDS

    width = max(len(name) for name in OPTIMIZER_KINDS)
    return "optimizers:\n" + "\n".join(f"  {kind.name.ljust(width)}  {kind.summary}"
                                         for kind in OPTIMIZER_KINDS.values())


def build_parser() -> argparse.ArgumentParser:
    """The ``samhess`` argument parser."""
    parser = _Parser(prog="samhess", description=(
        "Train with SGD, SAM and IRE while tracking Hessian curvature, and test the claim that "
        "SAM accelerates sharp directions while IRE accelerates flat ones."))
    from samhess import __version__

    parser.add_argument("--version", action="version", version=f"samhess {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="train one model with one optimizer, tracking curvature",
                              epilog=_optimizer_list(), formatter_class=_HelpFormatter,
                              description="Train one model with one optimizer and record, every "
                              "--track-every steps, losses, accuracies, top Hessian eigenvalues, "
                              "Tr(H), the gradient norm and the sharp/flat gains of the step.")
    _add_task_flags(run, command="run")
    run.set_defaults(handler=_cmd_run)

    compare = commands.add_parser(
        "compare", help="run several optimizers and seeds on one task; write a report",
        epilog=_optimizer_list(), formatter_class=_HelpFormatter,
        description="Run the same task for each optimizer and seed into DIR/<optimizer>/seed-<s>/ "
        "and write DIR/summary.json, DIR/report.md and DIR/report.html. With no arguments: the "
        "main job (digits, MLP; SGD, SAM, IRE, SAM-IRE; 3 seeds), about a minute on a laptop CPU.")
    _add_task_flags(compare, command="compare")
    compare.set_defaults(handler=_cmd_compare)

    analyze = commands.add_parser(
        "analyze", help="run the seed analysis on a saved run's final model",
        description="Taylor check, directional gains along Hessian eigenvectors (with the "
        "predictions), IRE mask quality and the spectral density of RUN_DIR's final model; writes "
        "RUN_DIR/analysis/analysis.json and PNGs.")
    analyze.add_argument("run_dir", metavar="RUN_DIR")
    analyze.add_argument("--quiet", action="store_true", help="no progress output")
    _add_strict_flag(analyze, "run")
    _add_threads_flag(analyze)
    analyze.set_defaults(handler=_cmd_analyze)

    report = commands.add_parser(
        "report", help="rebuild a run's or a comparison's report from its files",
        description="Rebuild summary.json, report.md and report.html (and the PNGs) in DIR from "
        "the run files; the same files give byte-identical output.")
    report.add_argument("directory", metavar="DIR")
    _add_strict_flag(report, "run or comparison")
    report.set_defaults(handler=_cmd_report)
    _add_experiment_commands(commands)
    return parser


def _add_experiment_commands(commands: Any) -> None:
    """``samhess experiment NAME``: one subcommand per registered experiment, its flags from its
    settings (:mod:`samhess.experiments.trajectories`)."""
    from samhess.experiments.trajectories import EXPERIMENTS

    parser = commands.add_parser(
        "experiment", help="run a named experiment on a paper's trajectory-level claim",
        description="Train the trajectories of one named experiment into DIR/arms/, then write "
        "DIR/summary.json, DIR/report.md and DIR/report.html with verdicts on the paper's claim "
        "(docs/cli.md, docs/theory.md). Resumable like samhess run.")
    names = parser.add_subparsers(dest="experiment_name", metavar="NAME", parser_class=_Parser,
                                  required=True)
    for experiment in EXPERIMENTS.values():
        sub = names.add_parser(experiment.name, help=experiment.claim,
                               description=f"{experiment.title}. {experiment.reference}. "
                               f"Claim: {experiment.claim}")
        groups = list(dict.fromkeys(setting.group for setting in experiment.settings))
        _add_setting_flags(sub, experiment.settings, groups,
                           lambda setting: setting.default_text())
        _add_file_flags(sub, what="experiment")
        sub.set_defaults(handler=_cmd_experiment)


def _file_settings(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The config file's settings, and its output directory (``out``) if it names one."""
    from samhess.experiments.config import read_config_file, take_output_dir

    return take_output_dir(read_config_file(args.config)) if args.config else ({}, None)


def _output_dir(args: argparse.Namespace, file_out: str | None) -> str | None:
    """``--out`` (over the config file's ``out``); an empty one is an error, not the default."""
    if args.out is not None and not args.out.strip():
        raise UsageError(f"samhess: error: --out {args.out!r} is invalid: it must name a "
                         "directory")
    return args.out or file_out


def _cmd_run(args: argparse.Namespace) -> int:
    from samhess.experiments.config import build_run_config

    (file_settings, file_out), flags = _file_settings(args), _settings(args)
    if "optimizer" not in flags and "optimizer" not in file_settings:
        raise UsageError("samhess run: error: the following argument is required: --optimizer "
                         "(or optimizer in --config)")
    config = build_run_config(file_settings, flags)
    # torch loads only now, so a mistyped flag is reported at once.
    from samhess.experiments.rundir import default_run_dir
    from samhess.experiments.threads import torch_threads
    from samhess.experiments.train import run_experiment

    from samhess.distributed import distributed_session, is_main_process

    given = _output_dir(args, file_out)
    out = Path(given) if given else default_run_dir(config)
    with distributed_session(), torch_threads(args.threads):
        result = run_experiment(config, out, resume=args.resume, force=args.force,
                                quiet=args.quiet)
        if is_main_process():
            print(result.screen_summary())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from samhess.experiments.config import build_compare_config

    flags = _settings(args)
    for key in ("optimizers", "seeds"):
        if key in vars(args):
            flags[key] = getattr(args, key)
    file_settings, file_out = _file_settings(args)
    given = _output_dir(args, file_out)
    config = build_compare_config(file_settings, flags)
    from samhess.experiments.compare import DEFAULT_COMPARE_DIR, run_compare
    from samhess.distributed import distributed_session, is_main_process
    from samhess.experiments.threads import torch_threads

    out = Path(given or DEFAULT_COMPARE_DIR)
    with distributed_session(), torch_threads(args.threads):
        result = run_compare(config, out, resume=args.resume, force=args.force,
                             quiet=args.quiet)
        if is_main_process():
            print(result.screen_summary())
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from samhess.experiments.analyze import analyze_run
    from samhess.experiments.threads import torch_threads

    with torch_threads(args.threads):
        result = analyze_run(Path(args.run_dir), quiet=args.quiet)
    print(result.screen_summary())
    return _strict_status(args, result.complete, f"{args.run_dir} is an unfinished run")


def _cmd_report(args: argparse.Namespace) -> int:
    from samhess.experiments.trajectories.runner import (
        holds_experiment, rebuild_experiment_report,
    )

    if holds_experiment(args.directory):
        result = rebuild_experiment_report(args.directory)
    else:
        from samhess.experiments.report import build_report

        result = build_report(Path(args.directory))
    print(result.screen_summary())
    return _strict_status(args, result.complete,
                          f"{args.directory} is unfinished (see the top of its report)")


def _cmd_experiment(args: argparse.Namespace) -> int:
    from samhess.experiments.trajectories import experiment_named, resolve_config

    experiment = experiment_named(args.experiment_name)
    file_settings, file_out = _file_settings(args)
    config = resolve_config(experiment, file_settings, _settings(args))
    from samhess.experiments.threads import torch_threads
    from samhess.experiments.trajectories.runner import (
        default_experiment_dir, run_trajectory_experiment,
    )

    given = _output_dir(args, file_out)
    out = Path(given or default_experiment_dir(experiment.name))
    with torch_threads(args.threads):
        result = run_trajectory_experiment(experiment, config, out, resume=args.resume,
                                           force=args.force, quiet=args.quiet)
    print(result.screen_summary())
    return 0


def _strict_status(args: argparse.Namespace, complete: bool, what: str) -> int:
    """0, or with ``--strict`` and unfinished work one line and exit status 2."""
    if complete or not args.strict:
        return 0
    print(f"samhess: error: {what}; --strict", file=sys.stderr)
    return EXIT_USAGE


def _check_threads(threads: int | None) -> None:
    """``--threads`` between 1 and the CPUs this process may use (torch crashes far beyond)."""
    if threads is None:
        return
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if not 1 <= threads <= available:
        raise UsageError(f"samhess: error: --threads {threads!r} is invalid: must be between 1 "
                         f"and {available}, the CPUs available here")


def _speaks_for_the_job() -> bool:
    """Under torchrun every rank meets the same error; rank 0 alone reports it."""
    return os.environ.get("RANK", "0") in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samhess`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _check_threads(getattr(args, "threads", None))
        return args.handler(args)
    except KeyboardInterrupt:
        if _speaks_for_the_job():
            print("samhess: interrupted (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (SamhessError, OSError) as exc:
        if os.environ.get("SAMHESS_DEBUG") or (isinstance(exc, OSError) and not exc.filename):
            raise  # an OSError on no file of the user's is a bug
        message = _one_line(exc)
        if not message.startswith("samhess"):
            message = f"samhess: error: {message}"
        if _speaks_for_the_job():
            print(message, file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
