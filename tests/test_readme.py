"""The manuals cannot rot: every YAML block of README.md and deploy/README.md goes
through ``gatehouse check`` (or ``policy check``), and every ``gatehouse`` command
line in their shell blocks parses.

Convention: the first line of each ```yaml block says what the block is.

* ``# gatehouse.yaml``: a gatehouse configuration, complete or with only some
  top-level sections (everything else has defaults). Written to a fresh
  directory with an empty ``policies/`` beside it and checked with
  ``gatehouse check``: it must pass.
* ``# gatehouse.yaml, checked --offline``: the same, checked with ``--offline``,
  for examples that name files existing only where Gatehouse runs (secrets,
  certificates).
* ``# policies/NAME.yaml``: a policy file, checked with ``gatehouse policy check``.
* ``# not checked: REASON``: YAML for another program (a Prometheus scrape
  configuration); the reason says which.

A block without one of these first lines fails the test. Checks run with the
process environment stripped of Gatehouse's, Azure's and OpenTelemetry's
variables, so ``${VAR}`` in an example needs a default.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.cli.main import build_parser
from tests.support.cli import gatehouse_command

REPO = Path(__file__).resolve().parents[1]
MANUALS = (REPO / "README.md", REPO / "deploy" / "README.md")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    manual: Path
    line: int
    language: str
    text: str

    @property
    def marker(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def __str__(self) -> str:
        return f"{self.manual.relative_to(REPO)}:{self.line}"


def blocks(language: str) -> list[Block]:
    out = []
    for manual in MANUALS:
        text = manual.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if m.group(1) == language:
                line = text.count("\n", 0, m.start()) + 1
                out.append(Block(manual, line, language, m.group(2)))
    return out


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEHOUSE_", "AZURE_", "OTEL_", "IDENTITY_", "GCE_"))
    }


def gatehouse(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return gatehouse_command(*args, cwd=cwd, env={**clean_env(), "PYTHONPATH": str(REPO)})


YAML_BLOCKS = blocks("yaml")


def test_the_manuals_have_yaml_blocks_of_every_kind() -> None:
    markers = {b.marker.split(":")[0].split(",")[0] for b in YAML_BLOCKS}
    assert {"# gatehouse.yaml", "# policies/orders.yaml", "# not checked"} <= markers, markers
    assert len(YAML_BLOCKS) >= 12


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=str)
def test_every_yaml_block_passes_gatehouse_check(block: Block, tmp_path: Path) -> None:
    marker = block.marker
    if marker.startswith("# not checked: ") and len(marker) > len("# not checked: "):
        return
    if marker in ("# gatehouse.yaml", "# gatehouse.yaml, checked --offline"):
        (tmp_path / "policies").mkdir()
        config = tmp_path / "gatehouse.yaml"
        config.write_text(block.text, encoding="utf-8")
        offline = ["--offline"] if marker.endswith("--offline") else []
        result = gatehouse("check", "--config", str(config), *offline, cwd=tmp_path)
    elif re.fullmatch(r"# policies/[\w.-]+\.yaml", marker):
        policy = tmp_path / marker.removeprefix("# ")
        policy.parent.mkdir()
        policy.write_text(block.text, encoding="utf-8")
        result = gatehouse("policy", "check", str(policy), cwd=tmp_path)
    else:
        pytest.fail(f"{block}: the first line must say what the block is (see this test)")
    assert result.returncode == 0, f"{block}:\n{result.stdout}{result.stderr}"


def command_lines() -> list[tuple[Block, str]]:
    """``gatehouse …`` commands of the shell blocks; synopses ([optional], a|b) excluded."""
    out = []
    for block in blocks("sh"):
        text = block.text.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for match in re.finditer(
                r"(?:^|\$\(|&& |; )(?:\S*/)?gatehouse (.*?)(?:\)|$| &$| &&| \|)", line
            ):
                command = match.group(1).strip()
                if not any(c in command for c in "[]()|…"):
                    out.append((block, command))
    return out


COMMANDS = command_lines()


def test_the_manuals_show_commands() -> None:
    shown = {command.split()[0] for _, command in COMMANDS}
    assert {"run", "check", "dev-token", "dev-idp", "credentials", "apikey"} <= shown, shown


@pytest.mark.parametrize(("block", "command"), COMMANDS, ids=lambda x: str(x))
def test_every_gatehouse_command_in_the_manuals_parses(block: Block, command: str) -> None:
    parser = build_parser()
    argv = shlex.split(command)
    try:
        parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{block}: `gatehouse {command}` is not a valid command line")


def test_make_run_needs_only_the_venv_not_the_test_toolchain() -> None:
    """`make run` works on a machine with Python alone: no npm, no system packages."""
    result = subprocess.run(
        ["make", "-n", "-B", "run"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "gatehouse demo" in result.stdout
    assert "pip install" in result.stdout and ".[demo,speed]" in result.stdout
    for tool in ("npm", "apt-get", "node_modules", ".[test]"):
        assert tool not in result.stdout, tool
