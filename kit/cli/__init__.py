"""`python -m kit COMMAND`: argument parsing and IO only; the computing lives in the modules.

Each command is a module here with `HELP`, `add_arguments(parser)` and `run(args) -> int`.
Heavy imports (torch, models) happen inside `run`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kit.errors import KitError

COMMANDS = {
    "demo-data": "kit.cli.demo_data",
    "fragments": "kit.cli.fragments",
    "folds": "kit.cli.folds",
    "probe": "kit.cli.probe",
    "train": "kit.cli.train",
    "predict": "kit.cli.predict",
    "evaluate": "kit.cli.evaluate",
    "submit": "kit.cli.submit",
    "validate": "kit.cli.validate",
    "report": "kit.cli.report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit",
        description="inkkit: fine-tune SAM and a U-Net for ink detection, ensemble, submit.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
