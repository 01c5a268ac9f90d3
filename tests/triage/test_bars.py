"""The production bar: set with who and when, history kept, every change audited."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether import Project, Store
from tether.cli import app
from tether.triage import TriageError, audit_entries, bar_history, get_bar, set_bar


def test_latest_bar_wins_history_kept_and_every_change_audited(store: Store) -> None:
    assert get_bar(store, "quote") is None
    first = set_bar(store, "quote", target=0.95, confidence=0.9, by="maria", now=100.0)
    second = set_bar(store, "quote", target=0.98, confidence=0.95, by="omar", note="Q3",
                     now=200.0)
    current = get_bar(store, "quote")
    assert current == second
    assert (current.target, current.confidence, current.set_by, current.set_at) == (
        0.98, 0.95, "omar", 200.0)
    assert [b.id for b in bar_history(store, "quote")] == [first.id, second.id]
    audit = audit_entries(store, "agent:quote")
    assert [(a.actor, a.action, a.at) for a in audit] == [
        ("maria", "bar.set", 100.0), ("omar", "bar.set", 200.0)]
    assert audit[0].detail["previous"] is None
    assert audit[1].detail["previous"]["target"] == 0.95
    assert audit[1].detail["bar"]["target"] == 0.98
    assert get_bar(store, "other") is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"target": 1.5}, "outside (0, 1)"),
        ({"target": 0.9, "confidence": 0.0}, "--confidence"),
        ({"target": 0.9, "metric": "recall"}, "not one of precision, accuracy"),
        ({"target": 0.9, "by": " "}, "--by"),
    ],
)
def test_bad_bar_is_one_line_error_and_nothing_written(
    store: Store, kwargs: dict, fragment: str
) -> None:
    args = {"confidence": 0.95, "by": "maria", **kwargs}
    with pytest.raises(TriageError, match=None) as info:
        set_bar(store, "quote", **args)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert bar_history(store, "quote") == [] and audit_entries(store) == []


def test_cli_bar_set_and_show_json(
    make_project: Callable[..., Project], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "quote.py").write_text(
        "import tether\n\n@tether.agent\ndef quote(ctx):\n    return {'price': 1}\n"
    )
    runner = CliRunner()
    base = ["-C", str(tmp_path)]
    out = runner.invoke(app, [*base, "bar", "set", "quote", "--precision", "0.98",
                              "--confidence", "0.95", "--by", "maria", "--note", "launch"])
    assert out.exit_code == 0, out.output
    assert "98.0%" in out.output
    out = runner.invoke(app, [*base, "bar", "set", "quote", "--accuracy", "0.9", "--by", "li"])
    assert out.exit_code == 0, out.output
    shown = runner.invoke(app, [*base, "bar", "show", "quote", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["bar"]["metric"] == "accuracy" and data["bar"]["set_by"] == "li"
    assert [b["set_by"] for b in data["history"]] == ["maria", "li"]
    assert [a["actor"] for a in data["audit"]] == ["maria", "li"]
    bad = runner.invoke(app, [*base, "bar", "set", "nosuch", "--precision", "0.9"])
    assert isinstance(bad.exception, TriageError)  # `tether` prints it as one line
    assert "no agent named 'nosuch'" in str(bad.exception)
