"""The grant service over a real file store, with a clock the test sets: expiries are
recorded exactly once however many workers sweep, and approvers are judged by policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from proxy.errors import GrantError, GrantForbidden, GrantNotFound
from proxy.grants.config import GrantsConfig
from proxy.grants.filestore import FileGrantStore
from proxy.grants.service import GrantService
from proxy.grants.store import Limits
from proxy.observability.audit import AuditWriter
from tests.policy.support import caller, facts, policy

POLICY = """
routes:
  - name: prod
    path: /prod
    backend: up
    allow:
      - name: writers
        grant:
          approvers: {all: [{groups: [sre]}, {source_ip: [10.0.0.0/8]}]}
          max_duration: 1h
"""
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


WRITERS: list[AuditWriter] = []


async def _services(tmp_path: Path, count: int, clock: Clock) -> tuple[list[GrantService], Path]:
    """``count`` workers' services over one grants file, writing one audit file."""
    policies = policy(tmp_path, POLICY)
    cfg = GrantsConfig(file=tmp_path / "grants.json", decide_within=600)
    audit_path = tmp_path / "audit.jsonl"
    out = []
    for _ in range(count):
        store = FileGrantStore(cfg.file, Limits(5, 100, 3600), clock=clock)
        await store.start()
        writer = AuditWriter(str(audit_path))
        WRITERS.append(writer)
        out.append(GrantService(store, cfg, lambda: policies, writer, clock=clock))
    return out, audit_path


def _audit(path: Path) -> list[dict[str, object]]:
    for writer in WRITERS:
        writer.flush()
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


ALICE = caller("alice", groups=("eng",))
BOB = caller("bob", groups=("sre",))
INSIDE = facts("/.gatehouse/access/api", client_ip="10.1.2.3")
OUTSIDE = facts("/.gatehouse/access/api", client_ip="192.0.2.9")


async def test_an_expiry_is_recorded_once_however_many_workers_sweep(tmp_path: Path) -> None:
    clock = Clock()
    (one, two, three), audit_path = await _services(tmp_path, 3, clock)
    asked = await one.request(ALICE, route="prod", rule=None, duration=60, justification="x")
    await two.decide(BOB, INSIDE, asked.grant.id, "approve", "ok")
    clock.now += 61
    changed = [await s.sweep() for s in (one, two, three)]
    assert sorted(changed) == [0, 0, 1]
    for service in (one, two, three):
        service._audit.flush()
    records = [orjson.loads(line) for line in audit_path.read_bytes().splitlines()]
    assert [(r["reason"], r["decision"], r["grant_id"]) for r in records] == [
        ("grant_expired", "event", asked.grant.id)
    ]
    assert records[0]["ts_epoch"] == T0 + 60


async def test_an_undecided_request_lapses_with_its_own_record(tmp_path: Path) -> None:
    clock = Clock()
    (service,), audit_path = await _services(tmp_path, 1, clock)
    asked = await service.request(
        ALICE, route="prod", rule="writers", duration=None, justification="x"
    )
    assert asked.grant.duration == 3600
    clock.now += 601
    assert await service.sweep() == 1
    service._audit.flush()
    (record,) = [orjson.loads(line) for line in audit_path.read_bytes().splitlines()]
    assert (record["reason"], record["subject"]) == ("grant_lapsed", "alice")
    assert (await service.view(ALICE, INSIDE, asked.grant.id)).state == "expired"


async def test_approvers_are_judged_by_the_rules_criteria_on_their_own_request(
    tmp_path: Path,
) -> None:
    (service,), _ = await _services(tmp_path, 1, Clock())
    asked = await service.request(ALICE, route="prod", rule=None, duration=60, justification="x")
    # In the sre group but outside the network the approvers rule names: not an approver.
    with pytest.raises(GrantNotFound):
        await service.decide(BOB, OUTSIDE, asked.grant.id, "approve", "ok")
    assert await service.decidable(BOB, OUTSIDE) == []
    assert [g.id for g in await service.decidable(BOB, INSIDE)] == [asked.grant.id]
    sre_alice = dataclasses.replace(ALICE, groups=frozenset({"sre"}))
    with pytest.raises(GrantForbidden) as info:
        await service.decide(sre_alice, INSIDE, asked.grant.id, "approve", "mine")
    assert info.value.reason == "self_approval"


async def test_time_to_decision_is_observed(tmp_path: Path) -> None:
    clock = Clock()
    (service,), _ = await _services(tmp_path, 1, clock)
    before = (
        REGISTRY.get_sample_value(
            "gatehouse_grant_decision_seconds_bucket", {"decision": "approved", "le": "300.0"}
        )
        or 0.0
    )
    asked = await service.request(ALICE, route="prod", rule=None, duration=60, justification="x")
    clock.now += 200
    await service.decide(BOB, INSIDE, asked.grant.id, "approve", "ok")
    after = REGISTRY.get_sample_value(
        "gatehouse_grant_decision_seconds_bucket", {"decision": "approved", "le": "300.0"}
    )
    assert after == before + 1


async def test_a_request_must_name_a_grant_rule_of_the_route(tmp_path: Path) -> None:
    (service,), _ = await _services(tmp_path, 1, Clock())
    for route, rule in (("prod", "nope"), ("nowhere", None)):
        with pytest.raises(GrantError) as info:
            await service.request(ALICE, route=route, rule=rule, duration=60, justification="x")
        assert info.value.reason == "no_such_grant_rule"
