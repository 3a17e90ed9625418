"""The ``gatehouse`` command.

Imports are deferred into the subcommands: ``run --workers N`` must set
``PROMETHEUS_MULTIPROC_DIR`` before any metric object is created.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

EXIT_CONFIG = 2

# Subcommand groups contributed by other packages: ``add_commands(subparsers)``.
_COMMAND_MODULES = (
    "proxy.policy.cli",
    "proxy.identity.cli",
    "proxy.credentials.cli",
    "proxy.state.cli",
    "proxy.grants.cli",
)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load_everything(path: Path) -> Any:
    """Validate the config file and the policies it names; print every problem."""
    from proxy.config.load import load_config
    from proxy.config.reader import ConfigError
    from proxy.policy.load import load_policies

    try:
        config = load_config(path)
        load_policies(
            config.policy_dir, set(config.backends), websocket=config.listen.mode != "decision"
        )
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); configuration refused", file=sys.stderr)
        return None
    return config


def cmd_check(args: argparse.Namespace) -> int:
    config = load_everything(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK ({len(config.backends)} backends, policies in {config.policy_dir})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    workers = int(args.workers)
    if workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gatehouse-metrics-")
    _setup_logging(args.verbose)
    config = load_everything(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    from proxy.runtime import run_single, run_workers

    if workers == 1:
        return run_single(config)
    return run_workers(config, workers)


def cmd_dev_cert(args: argparse.Namespace) -> int:
    from proxy.http.devcert import dev_certificates

    hosts = tuple(args.host) or ("localhost",)
    files = dev_certificates(Path(args.dir), hosts)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from proxy.demo import run_demo

    return run_demo(port=args.port, admin_port=args.admin_port, idp_port=args.idp_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Identity-aware reverse proxy.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="serve with a configuration file")
    p.add_argument("--config", required=True, help="path to gatehouse.yaml")
    p.add_argument("--workers", default=1, type=int, help="worker processes (SO_REUSEPORT)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a configuration and its policies, then exit")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("dev-cert", help="write a development CA, server and client certificate")
    p.add_argument("dir")
    p.add_argument("--host", action="append", default=[], help="server DNS name (repeatable)")
    p.set_defaults(func=cmd_dev_cert)

    p = sub.add_parser("demo", help="dev IdP + sample upstream + proxy, with things to try")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--idp-port", type=int, default=9000)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from proxy import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    return int(args.func(args))
