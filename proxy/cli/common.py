"""What every command group shares: the ``--config`` argument, JSON output,
problem lists and the exit code for an unusable configuration."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

EXIT_CONFIG = 2
CONFIG_ENV = "GATEHOUSE_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, defaulting to ``$GATEHOUSE_CONFIG``; required without it."""
    default = os.environ.get(CONFIG_ENV) or None
    parser.add_argument(
        "--config",
        default=default,
        required=default is None,
        metavar="FILE",
        help=f"path to gatehouse.yaml (default: ${CONFIG_ENV}"
        + (f", now {default})" if default else ", unset)"),
    )


def print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_problems(problems: Any, stream: Any = None) -> None:
    out = stream or sys.stderr
    for problem in problems:
        print(problem, file=out)
    print(f"{len(problems)} problem(s); configuration refused", file=out)


def load_everything(path: Path) -> Any:
    """Validate the config file and the policies it names; print every problem."""
    from proxy.config.check import check_configuration

    report = check_configuration(path)
    if not report.ok:
        print_problems(report.problems)
        return None
    return report.config
