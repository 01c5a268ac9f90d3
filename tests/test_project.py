"""The Project facade: submitting work checks agents and keys before anything is written."""

from __future__ import annotations

import pytest

import tether
from tests.conftest import MakeProject


@tether.agent(emits="kyc.passed")
def kyc(ctx: tether.Context) -> None:
    return None


@tether.agent(subscribes="kyc.passed")
def quote(ctx: tether.Context) -> None:
    return None


def test_submit_many_queues_every_item_and_runs_like_submit(
    make_project: MakeProject,
) -> None:
    project = make_project([kyc, quote])
    subs = project.submit_many([("kyc", f"case-{i}", {"n": i}) for i in range(3)]
                               + [("kyc", "case-0", {"n": 0})])
    assert [s.created for s in subs] == [True, True, True, False]
    stats = project.run_until_idle(poll_interval=0.01)
    assert (stats.succeeded, stats.failed) == (6, 0)  # three kyc runs, three quotes
    assert {t.ref for t in project.store.list_tasks(agent="quote")} == {
        f"quote/case-{i}" for i in range(3)
    }


def test_submit_many_writes_nothing_when_an_item_is_wrong(make_project: MakeProject) -> None:
    project = make_project([kyc, quote])
    with pytest.raises(tether.DiscoveryError, match=r"^item 1: no agent named 'kcy'"):
        project.submit_many([("kyc", "case-1"), ("kcy", "case-2")])
    with pytest.raises(tether.InvalidKey, match=r"^item 2: .*reserved"):
        project.submit_many([("kyc", "a"), ("kyc", "b"), ("kyc", "eval:x")])
    with pytest.raises(ValueError, match=r"^item 0: expected \(agent, key\)"):
        project.submit_many(["kyc"])  # type: ignore[list-item]
    assert project.store.list_tasks() == []
