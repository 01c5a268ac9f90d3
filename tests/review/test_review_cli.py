"""`tether review` and `tether examples` from the shell, as a reviewer uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.process.helpers import env_for, tether

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "claims_review.py"


def test_the_guide_shows_the_example_file_verbatim() -> None:
    assert EXAMPLE.read_text() in (ROOT / "docs" / "review.md").read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "claims.py").write_text(EXAMPLE.read_text())
    tether(tmp_path, "submit", "claims", "c1",
           "--input", '{"claim": {"description": "burst pipe flooded the basement"}}')
    tether(tmp_path, "submit", "claims", "c2", "--input", '{"claim": {"type": "home"}}')
    tether(tmp_path, "worker", "--until-idle", "--quiet")
    return tmp_path


def _queue(project: Path, *args: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(
        tether(project, "review", "list", "--json", *args).stdout)
    return out


@pytest.mark.timeout(400)  # about 20 `tether` processes: slow on a loaded 2-vCPU machine
def test_review_from_the_command_line(project: Path) -> None:
    listed = sorted(_queue(project), key=lambda i: str(i["task"]))
    assert [(i["task"], i["source"]) for i in listed] == [
        ("claims/c1", "rollout"), ("claims/c2", "rollout")]
    run = str(listed[0]["run_id"])
    assert "claims/c1" in tether(project, "review", "list").stdout

    env = env_for(project, USER="ana")
    out = json.loads(tether(
        project, "review", "record", run, "--verdict", "incorrect",
        "--reason", "gradual leaks are excluded",
        "--corrected-output", '{"decision": "decline"}', "--json", env=env).stdout)
    assert (out["verdict"], out["reviewer"], out["corrected_output"]) == (
        "incorrect", "ana", {"decision": "decline"})
    assert out["example_id"] is not None
    assert [i["task"] for i in _queue(project)] == ["claims/c2"]
    assert [i["task"] for i in _queue(project, "--agent", "other")] == []
    assert len(_queue(project, "--all")) == 2

    again = tether(project, "review", "record", run, "--verdict", "correct",
                   "--reviewer", "ben").stdout
    assert "run " + run + " correct (by ben)" in again
    shown = json.loads(tether(project, "review", "show", run, "--json").stdout)
    assert [(r["verdict"], r["reviewer"]) for r in shown["reviews"]] == [
        ("incorrect", "ana"), ("correct", "ben")]
    human = tether(project, "review", "show", run).stdout
    assert "incorrect by ana" in human and "gradual leaks are excluded" in human

    # The next similar case is shown the example; coverage counts it.
    tether(project, "submit", "claims", "c3",
           "--input", '{"claim": {"description": "a burst pipe flooded our basement"}}')
    tether(project, "worker", "--until-idle", "--quiet")
    c3 = json.loads(tether(project, "show", "claims/c3", "--json").stdout)
    assert c3["runs"][-1]["output"] == {"decision": "decline"}
    cov = json.loads(tether(project, "examples", "coverage", "claims", "--json").stdout)
    assert (cov["runs"], cov["covered"], cov["examples"]) == (3, 1, 1)
    assert "1 of 3 runs" in tether(project, "examples", "coverage", "claims").stdout
    assert json.loads(tether(project, "verify", "--json").stdout)["ok"] is True

    dataset = project / "cases.jsonl"
    dataset.write_text("\n".join(json.dumps(c) for c in [
        {"input": {"claim": {"description": "burst pipe flooded a basement"}},
         "label": {"decision": "decline"}},
        {"input": {"claim": {"description": "stolen bicycle"}}, "label": "approve"},
    ]))
    cal = json.loads(tether(project, "examples", "calibrate", "claims", "--dataset",
                            str(dataset), "--thresholds", "0.5,0.99", "--json").stdout)
    assert [(p["threshold"], p["covered"], p["accuracy_with"], p["accuracy_without"])
            for p in cal["points"]] == [(0.5, 1, 1.0, 0.5), (0.99, 0, 0.5, 0.5)]
    assert cal["recommended_threshold"] == 0.5
    assert "recommended example_threshold=0.50" in tether(
        project, "examples", "calibrate", "claims", "--dataset", str(dataset)).stdout


BAD = [
    (["999", "--verdict", "correct"], "no run 999"),
    (["1", "--verdict", "maybe"], "verdict 'maybe' is not one of correct, incorrect"),
    (["1", "--verdict", "incorrect"], "incorrect verdict needs a reason"),
    (["1", "--verdict", "partial", "--reason", "x", "--corrected-output", "{bad"],
     "--corrected-output is not valid JSON"),
    (["2", "--verdict", "incorrect", "--reason", "wrong"],
     "example field 'claim.description' is missing"),
]


@pytest.mark.timeout(300)
def test_bad_reviews_are_one_line_errors_and_write_nothing(project: Path) -> None:
    for args, message in BAD:
        proc = tether(project, "review", "record", *args, check=False)
        assert proc.returncode == 1, args
        assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for run in ("1", "2"):
        assert json.loads(tether(project, "review", "show", run, "--json").stdout)["reviews"] == []
