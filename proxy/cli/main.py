"""The ``gatehouse`` command.

Imports are deferred into the subcommands: ``run --workers N`` must set
``PROMETHEUS_MULTIPROC_DIR`` before any metric object is created.

Exit codes: 0 fine, 1 a check found a failure (a credential, a policy test),
2 the configuration (or a file or port it names) is unusable, printed as
``file:line: message`` or ``key: message``, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from proxy.cli import access, apikey, credentials, dev, policy, state
from proxy.cli.common import (
    EXIT_CONFIG,
    add_config_argument,
    load_everything,
    print_json,
    print_problems,
)

# Packages of the optional extras, imported only by the commands that need them:
# a command whose extra is missing says which to install.
OPTIONAL_PACKAGES = {
    "redis": "redis",
    "hiredis": "redis",
    "azure": "azure",
    "msal": "azure",
    "google": "gcp",
    "requests": "gcp",
    "opentelemetry": "otel",
    "fastapi": "demo",
    "uvicorn": "demo",
}

# Shown by ``gatehouse version``: what decides behaviour and performance.
KEY_LIBRARIES = (
    "aiohttp",
    "httptools",
    "pyjwt",
    "authlib",
    "cryptography",
    "pyyaml",
    "orjson",
    "prometheus-client",
    "uvloop",
    "azure-identity",
    "google-auth",
    "redis",
    "opentelemetry-sdk",
)


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.config.check import check_configuration

    report = check_configuration(Path(args.config), offline=args.offline)
    if args.json:
        print_json(report.as_json())
        return 0 if report.ok else EXIT_CONFIG
    for warning in report.warnings:
        print(warning)
    if not report.ok:
        print_problems(report.problems)
        return EXIT_CONFIG
    print(report.summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.observability import logs

    workers = int(args.workers)
    if workers < 1:
        print("--workers: must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gatehouse-metrics-")
    logs.configure("auto", "debug" if args.verbose else "info")
    config = load_everything(Path(args.config))
    if config is None:
        return EXIT_CONFIG
    logs.configure(config.log.format, "debug" if args.verbose else config.log.level)
    from proxy.errors import StartupError
    from proxy.runtime import run_single, run_workers

    try:
        if workers == 1:
            return run_single(config)
        return run_workers(config, workers)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG


def versions() -> list[tuple[str, str]]:
    """(name, version) of Gatehouse, Python and the key libraries ("-": not installed)."""
    import platform
    from importlib import metadata

    from proxy import __version__

    out = [
        ("gatehouse", __version__),
        ("python", f"{platform.python_version()} ({platform.python_implementation()})"),
    ]
    for name in KEY_LIBRARIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "-"))
    return out


def cmd_version(args: argparse.Namespace) -> int:
    found = versions()
    if args.json:
        print_json(dict(found))
        return 0
    width = max(len(name) for name, _ in found)
    for name, version in found:
        print(f"{name:<{width}}  {version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatehouse", description="Identity-aware reverse proxy.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="serve with a configuration file")
    add_config_argument(p)
    p.add_argument(
        "--workers", default=1, type=int, help="worker processes sharing the port (SO_REUSEPORT)"
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="log at debug level (overrides log.level)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check", help="validate a configuration and its policies in one pass, then exit"
    )
    add_config_argument(p)
    p.add_argument(
        "--offline",
        action="store_true",
        help="skip files that exist only where Gatehouse runs (secrets, certificates), for CI",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("version", help="print the versions of Gatehouse, Python and key libraries")
    p.add_argument("--json", action="store_true", help="print them as a JSON object")
    p.set_defaults(func=cmd_version)

    for group in (policy, apikey, credentials, state, access, dev):
        group.add_commands(sub)
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
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        extra = OPTIONAL_PACKAGES.get(missing)
        if extra is None:
            raise
        print(
            f"gatehouse {args.command}: needs {missing}, which is not installed; "
            f"pip install 'gatehouse[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
