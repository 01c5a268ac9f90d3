"""Discovery by convention: the project's ``agents/`` folder and installed entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tether import DiscoveryError, discover
from tether.graph.registry import discover_entry_points


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


KYC = """
    import tether

    @tether.agent(emits="kyc.cleared", team="onboarding")
    def kyc(ctx):
        return {"ok": True}
"""

QUOTE = """
    import tether
    from .shared import THRESHOLD

    @tether.agent(subscribes="kyc.cleared")
    def quote(ctx):
        return {"threshold": THRESHOLD}

    def helper():  # not an agent
        return 1
"""


def test_discovery_imports_every_module_of_the_agents_folder(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/kyc.py": KYC,
            "agents/quote.py": QUOTE,
            "agents/shared.py": "THRESHOLD = 7\n",
            "agents/pricing/__init__.py": "",
            "agents/pricing/risk.py": """
                import tether

                @tether.agent(name="risk_score", subscribes="kyc.cleared")
                def score(ctx):
                    return 1
            """,
            "agents/_private.py": "raise RuntimeError('private modules are not imported')\n",
            "agents/notes.txt": "not python",
        },
    )

    graph = discover(tmp_path, entry_points_=False)

    assert sorted(a.name for a in graph) == ["kyc", "quote", "risk_score"]
    assert graph["kyc"].team == "onboarding"
    assert graph["quote"].fn(None) == {"threshold": 7}  # the relative import worked
    assert sorted(graph.edges()) == [
        ("kyc", "kyc.cleared", "quote"),
        ("kyc", "kyc.cleared", "risk_score"),
    ]


def test_an_agent_imported_into_a_second_module_is_found_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/kyc.py": KYC,
            "agents/reexport.py": "from .kyc import kyc  # noqa: F401\n",
        },
    )

    graph = discover(tmp_path, entry_points_=False)

    assert [a.name for a in graph] == ["kyc"]


def test_a_project_without_an_agents_folder_has_an_empty_graph(tmp_path: Path) -> None:
    assert len(discover(tmp_path, entry_points_=False)) == 0


def test_another_agents_folder_can_be_named(tmp_path: Path) -> None:
    write(tmp_path, {"team_agents/kyc.py": KYC})

    assert [a.name for a in discover(tmp_path, agents_dir="team_agents", entry_points_=False)] == [
        "kyc"
    ]


def test_an_import_error_names_the_file_and_the_cause(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/kyc.py": KYC,
            "agents/broken.py": "import tether\nimport no_such_module_for_tether_tests\n",
        },
    )

    with pytest.raises(DiscoveryError) as info:
        discover(tmp_path, entry_points_=False)

    message = str(info.value)
    assert "broken.py" in message
    assert "ModuleNotFoundError" in message
    assert "no_such_module_for_tether_tests" in message


def test_a_syntax_error_in_an_agent_module_is_a_discovery_error(tmp_path: Path) -> None:
    write(tmp_path, {"agents/typo.py": "def agent(:\n"})

    with pytest.raises(DiscoveryError, match=r"importing .*typo\.py failed: SyntaxError"):
        discover(tmp_path, entry_points_=False)


def test_two_agents_with_one_name_in_two_files_name_both_places(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/a.py": KYC,
            "agents/b.py": """
                import tether

                @tether.agent(name="kyc")
                def other_kyc(ctx):
                    return None
            """,
        },
    )

    with pytest.raises(DiscoveryError, match="two agents are named 'kyc'") as info:
        discover(tmp_path, entry_points_=False)

    message = str(info.value)
    assert ".a.kyc" in message and ".b.other_kyc" in message


def test_a_cycle_across_files_is_a_discovery_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/ping.py": """
                import tether

                @tether.agent(subscribes="pong", emits="ping")
                def ping(ctx):
                    return None
            """,
            "agents/pong.py": """
                import tether

                @tether.agent(subscribes="ping", emits="pong")
                def pong(ctx):
                    return None
            """,
        },
    )

    with pytest.raises(DiscoveryError, match=r"cycle: .*ping.*pong"):
        discover(tmp_path, entry_points_=False)


def test_an_unknown_trigger_in_a_folder_is_a_discovery_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "agents/kyc.py": KYC,
            "agents/quote.py": """
                import tether

                @tether.agent(subscribes=["kyc.cleared", "risk.scored"])
                def quote(ctx):
                    return None
            """,
        },
    )

    with pytest.raises(DiscoveryError, match=r"'quote' subscribes to 'risk\.scored'"):
        discover(tmp_path, entry_points_=False)


def _install_entry_point(site: Path, dist: str, module: str, source: str, value: str) -> None:
    """A real installed distribution (dist-info on sys.path) with one tether.agents entry."""
    write(site, {f"{module}.py": source})
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[tether.agents]\n{dist} = {value}\n")


def test_entry_points_bring_in_a_teams_packaged_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _install_entry_point(
        site,
        "tether_test_risk_team",
        "tether_test_risk_agents",
        """
        import tether

        @tether.agent(subscribes="kyc.cleared", team="risk")
        def packaged_risk(ctx):
            return 1
        """,
        "tether_test_risk_agents",
    )
    monkeypatch.syspath_prepend(str(site))
    write(tmp_path / "project", {"agents/kyc.py": KYC})

    graph = discover(tmp_path / "project")

    assert {a.name for a in graph} >= {"kyc", "packaged_risk"}
    assert graph["packaged_risk"].team == "risk"
    assert ("kyc", "kyc.cleared", "packaged_risk") in graph.edges()


def test_an_entry_point_that_fails_to_load_is_a_discovery_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _install_entry_point(
        site,
        "tether_test_broken_team",
        "tether_test_broken_agents",
        "raise ImportError('missing credentials module')\n",
        "tether_test_broken_agents",
    )
    monkeypatch.syspath_prepend(str(site))

    with pytest.raises(
        DiscoveryError,
        match=r"entry point 'tether_test_broken_team'.*failed to load: "
        r"ImportError: missing credentials module",
    ):
        discover_entry_points()
