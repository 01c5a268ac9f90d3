"""`tether eval` as a user drives it, on the example in docs/examples/evals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.process.helpers import tether

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "evals"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE, tmp_path, dirs_exist_ok=True)
    return tmp_path


def run_json(project: Path, *args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(tether(project, *args, "--json").stdout)


def test_the_guide_walkthrough(project: Path) -> None:
    loaded = run_json(project, "eval", "load", "claims.jsonl")
    assert (loaded["name"], loaded["cases"], loaded["observations"]) == ("claims", 8, 11)

    v1 = run_json(
        project,
        "eval",
        "run",
        "claims",
        "--agent",
        "fraud_v1",
        "--name",
        "v1",
        "--as-of",
        "decision",
        "--as-of",
        "latest",
        "--as-of",
        "30d",
    )
    assert v1["run"]["ran"] == 8 and v1["run"]["failed"] == 0
    as_of = v1["evaluation"]["as_of"]
    # Hand-computed in docs/evaluation.md.
    assert (as_of["decision"]["agreement"], as_of["decision"]["unlabeled"]) == (0.714286, 1)
    assert as_of["latest"]["agreement"] == 0.625
    assert as_of["30d"]["agreement"] == 0.625
    assert v1["evaluation"]["maturation_gap"]["latest"] == -0.089286
    assert v1["evaluation"]["cost"]["total"] == pytest.approx(0.016)

    # Experiments never emit production triggers: block_card has no task.
    assert json.loads(tether(project, "tasks", "--agent", "block_card", "--json").stdout) == []

    # Running the same experiment again resumes it: nothing is redone.
    again = run_json(project, "eval", "run", "claims", "--agent", "fraud_v1", "--name", "v1")
    assert (again["run"]["ran"], again["run"]["already_done"]) == (0, 8)

    v2 = run_json(
        project,
        "eval",
        "run",
        "claims",
        "--agent",
        "fraud_v2",
        "--name",
        "v2",
        "--rerun-disagreements",
    )
    # v2 is wrong on c03, c05, c07 and c08 under the latest labels: each re-run at once.
    assert v2["run"]["reruns"] == 4
    triage = tether(project, "eval", "disagreements", "v2", "--json", check=False)
    # No HTTP at all: same (no) answers, same decision.
    rows = json.loads(triage.stdout)
    assert {r["key"]: r["classification"] for r in rows} == dict.fromkeys(
        ["c03", "c05", "c07", "c08"], "agent_wrong"
    )
    gate = tether(
        project, "eval", "compare", "v1", "v2", "--max-regressions", "1", "--json", check=False
    )
    assert gate.returncode == 1
    out = json.loads(gate.stdout)
    assert sorted(r["key"] for r in out["regressed"]) == ["c03", "c07"]
    assert [r["key"] for r in out["fixed"]] == ["c04"]
    assert (out["agreement_a"], out["agreement_b"]) == (0.625, 0.5)
    ok = tether(project, "eval", "compare", "v1", "v2", "--max-regressions", "2")
    assert "1 fixed, 2 regressed" in ok.stdout

    html_path, md_path = project / "out" / "v1.html", project / "out" / "v1.md"
    tether(project, "eval", "report", "v1", "--html", str(html_path), "--md", str(md_path))
    page = html_path.read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "data:image/svg+xml;base64," in page
    md = md_path.read_text()
    assert "<script>" not in md and "![Confusion matrix](v1.confusion.svg)" in md
    assert (project / "out" / "v1.age.svg").read_text().lstrip().startswith("<?xml")

    sub = run_json(
        project, "eval", "subset", "claims", "--size", "4", "--seed", "1", "--out", "subset.jsonl"
    )
    assert sub["cases"] == 4 and sub["name"] == "claims-subset"
    assert len((project / "subset.jsonl").read_text().splitlines()) == 4
    listed = run_json(project, "eval", "experiments")
    assert [e["name"] for e in listed] == ["v2", "v1"]


def test_bad_input_is_one_clear_line(project: Path) -> None:
    (project / "bad.jsonl").write_text('{"key": "a", "labels": [{"value": 1}]}\n')
    res = tether(project, "eval", "load", "bad.jsonl", check=False)
    assert res.returncode == 1
    assert "bad.jsonl:1: field 'labels[0].observed_at': missing" in res.stderr
    assert "Traceback" not in res.stderr
    res = tether(project, "eval", "score", "nope", check=False)
    assert res.returncode == 1 and "no experiment 'nope'" in res.stderr
    res = tether(
        project,
        "eval",
        "run",
        "claims.jsonl",
        "--agent",
        "fraud_v1",
        "--as-of",
        "soon",
        check=False,
    )
    assert res.returncode == 1 and "--as-of 'soon'" in res.stderr


SLOW_AGENT = """
import time
import tether

@tether.agent
def slow(ctx):
    time.sleep(0.05)
    return {"decision": "legit"}
"""


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    import signal

    from tests.process.helpers import env_for, spawn, wait_for

    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "slow.py").write_text(SLOW_AGENT)
    rows = [
        json.dumps(
            {
                "key": f"k{i}",
                "input": {},
                "labels": [{"value": "legit", "observed_at": "2025-01-01T00:00:00Z"}],
            }
        )
        for i in range(200)
    ]
    (tmp_path / "cases.jsonl").write_text("\n".join(rows) + "\n")
    env = env_for(tmp_path)
    proc = spawn(
        tmp_path,
        "eval",
        "run",
        "cases.jsonl",
        "--agent",
        "slow",
        "--name",
        "e",
        "-c",
        "2",
        "--json",
        env=env,
    )

    def some_done() -> bool:
        out = tether(tmp_path, "eval", "experiments", "--json", env=env, check=False)
        done = json.loads(out.stdout or "[]")
        return bool(done) and done[0]["finished_cases"] >= 10

    wait_for(some_done, timeout=30, what="10 cases done")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    first = json.loads(out)["run"]
    assert first["interrupted"] and 10 <= first["ran"] < 200
    second = run_json(
        tmp_path, "eval", "run", "cases.jsonl", "--agent", "slow", "--name", "e", "-c", "50"
    )
    assert second["run"]["already_done"] == first["ran"]
    assert second["run"]["ran"] == 200 - first["ran"]
    assert second["evaluation"]["as_of"]["latest"]["scored"] == 200
