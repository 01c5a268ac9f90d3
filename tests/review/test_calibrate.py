"""Calibration: coverage and accuracy with vs without examples, and the recommendation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.review.test_examples import Planted
from tether import ConfigError, Context, Project
from tether.review import add_example
from tether.review.calibrate import Case, calibrate, read_dataset

MakeProject = Callable[..., Project]


@tether.agent(example_fields=("v",), example_threshold=0.9, embedder=Planted())
def judge(ctx: Context) -> dict[str, Any]:
    shown = ctx.examples(k=1)
    if shown:  # follow the nearest reviewed correction
        return {"decision": shown[0].corrected_output["decision"]}
    return {"decision": "approve"}


def test_the_recommendation_is_where_injection_stops_helping(
    make_project: MakeProject, store_url: str
) -> None:
    p = make_project([judge], database_url=store_url)
    add_example(p.store, judge, input={"v": "v:1,0"}, corrected_output={"decision": "decline"},
                reason="this kind of case is declined")
    # Near cases (similarity 0.95) really are declines; marginal ones (0.6) are not.
    near = [Case(f"n{i}", {"v": "v:0.95,0.3"}, {"decision": "decline"}) for i in range(4)]
    marginal = [Case(f"m{i}", {"v": "v:0.6,0.8"}, {"decision": "approve"}) for i in range(2)]
    far = [Case(f"f{i}", {"v": "v:0,1"}, "approve") for i in range(4)]
    result = calibrate(p.store, judge, [*near, *marginal, *far],
                       thresholds=(0.5, 0.6, 0.7, 0.9, 0.99))

    by = {pt.threshold: pt for pt in result.points}
    assert {t: (pt.covered, pt.coverage) for t, pt in by.items()} == {
        0.5: (6, 0.6), 0.6: (6, 0.6), 0.7: (4, 0.4), 0.9: (4, 0.4), 0.99: (0, 0.0)}
    assert by[0.99].accuracy_with == by[0.99].accuracy_without == 0.6  # far + marginal
    assert by[0.9].accuracy_with == 1.0 and by[0.9].covered_accuracy_without == 0.0
    assert by[0.6].accuracy_with == pytest.approx(0.8)  # marginal neighbours hurt
    assert result.recommended == 0.7  # the loosest threshold with the best accuracy
    assert result.to_dict()["points"][0]["gain"] == pytest.approx(0.2)


def test_no_helpful_threshold_recommends_injecting_nothing(
    make_project: MakeProject, store_url: str
) -> None:
    p = make_project([judge], database_url=store_url)
    add_example(p.store, judge, input={"v": "v:1,0"}, corrected_output={"decision": "decline"})
    cases = [Case("a", {"v": "v:0.95,0.3"}, "approve")]
    result = calibrate(p.store, judge, cases, thresholds=(0.5, 0.9))
    assert result.recommended is None and "inject nothing" in result.notes[0]


def test_dataset_files(tmp_path: Path) -> None:
    good = tmp_path / "cases.jsonl"
    good.write_text("\n".join(json.dumps({"input": {"v": i}, "label": "x"}) for i in range(3)))
    assert [c.key for c in read_dataset(good)] == ["1", "2", "3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": 1}\n')
    with pytest.raises(ConfigError, match="case 1 needs an input and a label"):
        read_dataset(bad)
    with pytest.raises(ConfigError, match="cannot read it"):
        read_dataset(tmp_path / "missing.jsonl")


def test_evaluation_datasets_are_read_with_their_latest_label(tmp_path: Path) -> None:
    """The evaluation's format (labels observed over time): each case is scored against
    the label as it is known now; an unlabelled case is left out."""
    path = tmp_path / "claims.jsonl"
    rows = [
        {"key": "a", "input": {"v": 1}, "labels": [
            {"value": "approve", "observed_at": "2026-01-01T00:00:00Z"},
            {"value": "decline", "observed_at": "2026-03-01T00:00:00Z"},
        ]},
        {"key": "b", "input": {"v": 2}, "labels": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert read_dataset(path) == [Case(key="a", input={"v": 1}, label="decline")]
