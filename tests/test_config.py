"""Configuration: ``tether.toml`` in the project, ``TETHER_*`` over it, arguments over both."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether
from tether import ConfigError, Project, load_settings


def test_with_no_configuration_the_store_is_sqlite_under_dot_tether(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)

    assert settings.project_dir == tmp_path.resolve()
    assert settings.database_url is None
    assert settings.state_dir == tmp_path.resolve() / ".tether"
    assert settings.url == f"sqlite:///{tmp_path.resolve() / '.tether' / 'tether.db'}"
    assert (settings.agents_dir, settings.durability, settings.concurrency) == ("agents", "full", 4)
    assert settings.lease_seconds == 30.0


def test_the_default_store_is_created_on_first_use(tmp_path: Path) -> None:
    with Project.load(tmp_path, agents=[]) as project:
        project.store.submit("a", "k")

    assert (tmp_path / ".tether" / "tether.db").is_file()


def test_the_project_folder_defaults_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert load_settings().project_dir == tmp_path.resolve()


def test_values_come_from_tether_toml(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(
        'database_url = "postgresql://db.internal/tether"\n'
        "concurrency = 16\n"
        "lease-seconds = 12.5\n"
        'durability = "relaxed"\n'
        'agents_dir = "team_agents"\n'
    )

    settings = load_settings(tmp_path)

    assert settings.url == "postgresql://db.internal/tether"
    assert settings.concurrency == 16
    assert settings.lease_seconds == 12.5
    assert settings.durability == "relaxed"
    assert settings.agents_dir == "team_agents"


def test_a_tether_table_in_the_file_is_read_too(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("[tether]\nconcurrency = 2\npoll_interval = 0.5\n")

    settings = load_settings(tmp_path)

    assert (settings.concurrency, settings.poll_interval) == (2, 0.5)


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tether.toml").write_text("concurrency = 16\nlease_seconds = 12\n")
    monkeypatch.setenv("TETHER_CONCURRENCY", "3")
    monkeypatch.setenv("TETHER_DATABASE_URL", "sqlite:////tmp/elsewhere.db")

    settings = load_settings(tmp_path)

    assert settings.concurrency == 3  # the environment wins
    assert settings.lease_seconds == 12.0  # the file still counts where env is silent
    assert settings.url == "sqlite:////tmp/elsewhere.db"


def test_arguments_override_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_CONCURRENCY", "3")

    assert load_settings(tmp_path, concurrency=9).concurrency == 9
    assert load_settings(tmp_path, concurrency=None).concurrency == 3


def test_tether_project_dir_names_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tether.toml").write_text("concurrency = 7\n")
    monkeypatch.setenv("TETHER_PROJECT_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)

    settings = load_settings()

    assert settings.project_dir == tmp_path.resolve()
    assert settings.concurrency == 7


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ("concurrency = 0\n", "concurrency"),
        ('concurrency = "many"\n', "concurrency"),
        ("lease_seconds = -1\n", "lease_seconds"),
        ('durability = "sometimes"\n', "durability"),
        ("poll_interval = 0\n", "poll_interval"),
        ("colour = true\n", "colour"),
    ],
)
def test_an_invalid_file_value_is_a_config_error_naming_the_setting_and_file(
    tmp_path: Path, toml: str, setting: str
) -> None:
    (tmp_path / "tether.toml").write_text(toml)

    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)

    message = str(info.value)
    assert f"{setting}:" in message
    assert "tether.toml" in message


def test_an_invalid_environment_value_is_a_config_error_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_LEASE_SECONDS", "soon")

    with pytest.raises(ConfigError, match=r"lease_seconds: .*TETHER_|TETHER_.*lease_seconds:"):
        load_settings(tmp_path)


def test_a_broken_toml_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text("concurrency = = 3\n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path)


def test_a_non_table_tether_entry_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('tether = "yes"\n')

    with pytest.raises(ConfigError, match=r"\[tether\] must be a table"):
        load_settings(tmp_path)


def test_an_unsupported_database_url_is_a_config_error_when_the_store_opens(
    tmp_path: Path,
) -> None:
    (tmp_path / "tether.toml").write_text('database_url = "mysql://root@localhost/tether"\n')

    with Project.load(tmp_path, agents=[]) as project, pytest.raises(
        ConfigError, match="supports sqlite and postgresql"
    ):
        _ = project.store


def test_relative_sqlite_path_is_relative_to_the_project(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text('database_url = "sqlite:///data/app.db"\n')
    settings = load_settings(tmp_path)
    assert settings.url == f"sqlite:///{tmp_path / 'data' / 'app.db'}"


def test_agent_modules_from_the_environment_join_discovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_AGENT_MODULES", '["tether.demo.agents"]')
    project = Project.load(tmp_path)
    assert project.settings.agent_modules == ("tether.demo.agents",)
    assert "quote" in project.graph
    monkeypatch.setenv("TETHER_AGENT_MODULES", '["no_such_module_here"]')
    with pytest.raises(tether.DiscoveryError, match="no_such_module_here"):
        _ = Project.load(tmp_path).graph
