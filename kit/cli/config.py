"""Print the resolved config (preset or YAML, then --set overrides) as YAML, without training.

`auto` fields stay `auto`: `kit train` resolves them from the fold's training rows (see
`kit probe` for what they would be on a dataset). Exits 2 with the reason on a bad config.
"""

from __future__ import annotations

import argparse

from kit.config import preset_names

HELP = "print the resolved config without training"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="cpu-demo",
                   help=f"preset name ({', '.join(preset_names())}) or YAML path")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import yaml

    from kit.config import config_to_dict, load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
    return 0
