"""``gatehouse access request|list|approve|deny|revoke``: just-in-time access from a
terminal or a pipeline, against a running gatehouse, as the caller themselves.

The credential is a bearer token (or an API key, sent the same way) from
``--token-file`` or ``$GATEHOUSE_TOKEN`` (``--token`` works too, but shows in
the process list); it is never printed. ``--json`` prints the API's answer.

Exit codes: 0 done, 1 the gatehouse refused (the reason is printed), 2 usage
or connection problems.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PREFIX = "/.gatehouse/access/api"
EXIT_REFUSED = 1
EXIT_USAGE = 2


class _Failed(Exception):
    def __init__(self, code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = body


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    token = args.token or os.environ.get("GATEHOUSE_TOKEN", "")
    if not token:
        raise _Failed(EXIT_USAGE, "no credential: give --token-file or set GATEHOUSE_TOKEN")
    return token.strip()


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    base = (args.url or os.environ.get("GATEHOUSE_URL", "")).rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise _Failed(EXIT_USAGE, "give --url https://gatehouse.example.com or set GATEHOUSE_URL")
    data = json.dumps(body).encode() if body is not None else None
    # The scheme was checked above: http(s) only.
    request = urllib.request.Request(f"{base}{PREFIX}{path}", data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"Bearer {_token(args)}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    try:
        with urllib.request.urlopen(  # noqa: S310 (http(s) only, checked above)
            request, timeout=args.timeout, context=context
        ) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"null")
        except ValueError:
            answer = None
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise _Failed(EXIT_REFUSED, f"refused: {exc.code} {reason or exc.reason}", answer) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failed(EXIT_USAGE, f"cannot reach the gatehouse: {reason}") from None


# -- human output --------------------------------------------------------------------
def _duration(seconds: float) -> str:
    from proxy.config.reader import format_duration

    return format_duration(seconds)


def _when(grant: dict[str, Any], now: float) -> str:
    state = grant.get("state")
    if state == "active" and grant.get("ends_at"):
        return f"{_duration(grant['ends_at'] - now)} left"
    if state == "approved" and grant.get("starts_at"):
        return f"starts in {_duration(grant['starts_at'] - now)}"
    if state == "pending":
        return f"lapses in {_duration(grant['decide_by'] - now)}"
    return ""


def _line(grant: dict[str, Any], now: float) -> str:
    requester = grant["requester"]
    who = requester.get("email") or requester["subject"]
    parts = [
        grant["id"],
        f"{grant['state']:<8}",
        f"{grant['route']}/{grant['rule']}",
        _duration(grant["duration"]),
        who,
        _when(grant, now),
    ]
    line = "  ".join(p for p in parts if p)
    if grant.get("justification"):
        line += f"  “{' '.join(grant['justification'].split())}”"
    return line


def _show(args: argparse.Namespace, answer: Any, summary: str | None = None) -> None:
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return
    now = time.time()
    if isinstance(answer, dict) and "requests" in answer:
        items = answer["requests"]
        for grant in items:
            print(_line(grant, now))
        if not items:
            print("none")
        return
    if summary:
        print(summary)
    print(_line(answer, now))


# -- commands ------------------------------------------------------------------------
def cmd_request(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"route": args.route, "justification": args.justification or ""}
    if args.rule:
        body["rule"] = args.rule
    if args.duration:
        body["duration"] = args.duration
    if args.start:
        body["start"] = args.start
    answer = _call(args, "POST", "/requests", body)
    _show(args, answer, "requested; waiting for an approver:")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _show(args, _call(args, "GET", "/approvals" if args.to_decide else "/requests"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", f"/requests/{args.id}")
    _show(args, answer)
    if not args.json:
        for event in answer.get("history", []):
            actor = event.get("actor") or {}
            who = actor.get("email") or actor.get("subject") or "the clock"
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["at"]))
            reason = f"  “{event['reason']}”" if event.get("reason") else ""
            print(f"  {stamp} UTC  {event['event']:<8} {who}{reason}")
    return 0


def _decision(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        answer = _call(args, "POST", f"/requests/{args.id}/{action}", {"reason": args.reason})
        _show(args, answer, f"{action}d:" if action != "deny" else "denied:")
        return 0

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the gatehouse (default $GATEHOUSE_URL)")
    parser.add_argument("--token-file", help="file holding your bearer token or API key")
    parser.add_argument("--token", help="bearer token (prefer --token-file or $GATEHOUSE_TOKEN)")
    parser.add_argument("--cacert", help="CA bundle to verify the gatehouse with")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def add_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("access", help="just-in-time access: request, list, decide")
    sub = parser.add_subparsers(dest="access_command", metavar="ACTION", required=True)

    p = sub.add_parser("request", help="ask for time-bound access to a route")
    p.add_argument("route", help="the route's name, as `access list` and the page show it")
    p.add_argument("--rule", help="the grant rule (needed when the route has several)")
    p.add_argument("--duration", help="e.g. 2h (default: the rule's max_duration)")
    p.add_argument("--justification", "-j", help="why (required by most rules)")
    p.add_argument("--start", help="ISO 8601 time with zone to start at (default: on approval)")
    _common(p)
    p.set_defaults(func=_guarded(cmd_request))

    p = sub.add_parser("list", help="your requests, or (--to-decide) those you may decide")
    p.add_argument("--to-decide", action="store_true", help="requests waiting for you")
    _common(p)
    p.set_defaults(func=_guarded(cmd_list))

    p = sub.add_parser("show", help="one request with its audit trail")
    p.add_argument("id", help="the request's id")
    _common(p)
    p.set_defaults(func=_guarded(cmd_show))

    for action, text in (
        ("approve", "approve a request (never your own)"),
        ("deny", "deny a request"),
        ("revoke", "end a grant or withdraw a request"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("id", help="the request's id")
        p.add_argument("--reason", "-r", required=True, help="why: recorded in the audit trail")
        _common(p)
        p.set_defaults(func=_guarded(_decision(action)))


def _guarded(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except _Failed as failed:
            if args.json and failed.body is not None:
                print(json.dumps(failed.body, indent=2, sort_keys=True))
            print(f"gatehouse access: {failed}", file=sys.stderr)
            return failed.code
        except OSError as exc:
            print(f"gatehouse access: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE

    return run
