"""`inkkit COMMAND` (= `python -m kit COMMAND`): argument parsing and IO only; the computing
lives in the modules.

Each command is a module here with `HELP`, `add_arguments(parser)` and `run(args) -> int`.
Heavy imports (torch, models) happen inside `run`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from kit.errors import KitError, KitWarning

COMMANDS = {
    "demo-data": "kit.cli.demo_data",
    "fragments": "kit.cli.fragments",
    "folds": "kit.cli.folds",
    "probe": "kit.cli.probe",
    "config": "kit.cli.config",
    "doctor": "kit.cli.doctor",
    "train": "kit.cli.train",
    "predict": "kit.cli.predict",
    "evaluate": "kit.cli.evaluate",
    "submit": "kit.cli.submit",
    "pseudo-label": "kit.cli.pseudo_label",
    "validate": "kit.cli.validate",
    "report": "kit.cli.report",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout and shows each option's default, unless the help
    already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, [], argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never wrap inside a hyphenated name (cpu-demo-unet, --max-steps): it is copied as is
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from kit import __version__

    # the same commands answer to `inkkit` (the console script) and `python -m kit`
    prog = "inkkit" if os.path.basename(sys.argv[0]) == "inkkit" else "python -m kit"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="inkkit: fine-tune SAM and a U-Net for ink detection, ensemble, submit.",
    )
    parser.add_argument("--version", action="version", version=f"inkkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=_HelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A KitWarning as one `warning: ...` line (no source location); others as Python shows them."""
    if issubclass(category, KitWarning):
        print(f"warning: {message}", file=file or sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """--no-progress: no bars. Without it, a terminal shows bars and anything else (a log, a
    pipe) one summary line per bar (kit/progress.py)."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (off a terminal each bar is one summary line)")  # fmt: skip


def checked_device(requested: str | None) -> str:
    """--device, checked before any work (default: cuda if present, else cpu)."""
    import torch

    from kit.errors import KitError

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise KitError(
            f"--device {requested!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise KitError(
            f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            "visible; use --device cpu or another index"
        )
    return requested
