"""``gatehouse check``: the configuration and its policies, every problem in one pass.

The configuration is read as far as it goes even when it has problems, and
its policies are then checked against the backends it names, so an undefined
backend in a policy is reported together with the configuration's own
problems rather than after they are fixed. Policy warnings (the same as
``gatehouse policy check``) come with the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.load import read_config
from proxy.config.reader import ConfigError, ConfigProblem, Problems
from proxy.config.schema import Config
from proxy.policy.check import Finding, check_policies
from proxy.policy.evaluate import PolicySet
from proxy.policy.load import load_policies


@dataclass(frozen=True, slots=True)
class CheckReport:
    path: Path
    offline: bool
    problems: tuple[ConfigProblem, ...]
    warnings: tuple[Finding, ...]
    config: Config | None
    policy: PolicySet | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        assert self.config is not None and self.policy is not None
        return (
            f"{self.path}: OK ({len(self.config.backends)} backends, "
            f"{len(self.policy.routes)} routes, policy version {self.policy.version}"
            f"{', offline' if self.offline else ''})"
        )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": str(self.path),
            "ok": self.ok,
            "offline": self.offline,
            "problems": [
                {"file": p.file, "line": p.line, "message": p.message} for p in self.problems
            ],
            "warnings": [
                {"source": w.source, "level": w.level, "message": w.message} for w in self.warnings
            ],
        }
        if self.ok and self.config is not None and self.policy is not None:
            out["backends"] = sorted(self.config.backends)
            out["routes"] = len(self.policy.routes)
            out["policy_version"] = self.policy.version
            out["policy_files"] = list(self.policy.files)
        return out


def check_configuration(path: Path, *, offline: bool = False) -> CheckReport:
    problems = Problems()
    config = read_config(path, problems, offline=offline)
    policy: PolicySet | None = None
    warnings: list[Finding] = []
    # A missing policy directory is already one of the configuration's problems.
    if config is not None and config.policy_dir.is_dir():
        try:
            policy = load_policies(
                config.policy_dir,
                set(config.backends),
                websocket=config.listen.mode != "decision",
            )
        except ConfigError as exc:
            problems.items.extend(exc.problems)
        else:
            warnings += check_policies(policy)
    if config is not None:
        for backend in config.backends.values():
            warnings += (Finding("warning", str(path), n) for n in backend.options.notes)
    ordered = sorted(problems.items, key=lambda p: (p.file, p.line))
    return CheckReport(path, offline, tuple(ordered), tuple(warnings), config, policy)
