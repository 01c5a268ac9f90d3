"""Configuration: ``tether.toml`` in the project folder, overridden by ``TETHER_*`` variables.

With neither, Tether uses a SQLite file under ``./.tether/`` and the local worker.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tether.errors import ConfigError

CONFIG_FILE = "tether.toml"


class Settings(BaseSettings):
    """Every setting Tether reads. Each can be set in ``tether.toml`` or as ``TETHER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="forbid", frozen=True)

    project_dir: Path = Field(default_factory=Path.cwd)
    """The project folder: where ``tether.toml``, ``agents/`` and ``.tether/`` live."""

    database_url: str | None = None
    """SQLAlchemy URL of the store. Default: ``sqlite:///<project>/.tether/tether.db``."""

    agents_dir: str = "agents"
    """Folder (relative to the project) whose modules are imported to discover agents."""

    agent_modules: tuple[str, ...] = ()
    """Importable modules whose agents join the project's (besides ``agents/`` and the
    ``tether.agents`` entry points), e.g. ``["acme_claims.agents"]``. As an environment
    variable, a JSON list."""

    durability: Literal["full", "relaxed"] = "full"
    """``full``: every commit is synced (survives power loss). ``relaxed``: SQLite
    ``synchronous=NORMAL`` / PostgreSQL ``synchronous_commit=off``; the last commits before a
    power loss (not a process crash) may be lost."""

    provider: Literal["local", "celery", "temporal"] = "local"
    """Which engine executes queued runs: the embedded local worker, Celery, or Temporal."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    """The Celery broker (Redis or RabbitMQ, e.g. ``amqp://guest:guest@127.0.0.1:5672//``)."""

    temporal_address: str = "127.0.0.1:7233"
    """The Temporal frontend, ``host:port``."""

    temporal_namespace: str = "default"
    """The Temporal namespace the workflows run in."""

    task_queue: str = "tether"
    """The Celery queue / Temporal task queue runs are dispatched on."""

    concurrency: int = Field(default=4, ge=1, le=1024)
    """Runs a local worker executes at once."""

    lease_seconds: float = Field(default=30.0, gt=0)
    """How long a claimed run stays owned without a heartbeat before it is presumed lost."""

    poll_interval: float = Field(default=0.2, gt=0)
    """Seconds an idle worker waits before looking for queued runs again."""

    # -- world capture (docs/capture.md) ---------------------------------------------

    capture: bool = True
    """Record every HTTP exchange agents make through httpx and requests."""

    capture_blobs: str | None = None
    """Where bodies go: a folder (relative to the project) or an fsspec URL such as
    ``s3://bucket/tether``. Default: ``blobs/`` next to the SQLite file, else
    ``.tether/blobs``."""

    capture_max_body: int = Field(default=10 * 1024 * 1024, ge=0)
    """Bodies larger than this many bytes are hashed but not stored (marked ``over_cap``)."""

    capture_redact_headers: tuple[str, ...] = ()
    """Header names redacted besides the built-in ones (Authorization, Cookie, API keys…)."""

    capture_redact_fields: tuple[str, ...] = ()
    """JSON / form field names redacted in bodies besides the built-in ones (password…)."""

    capture_ignore_query: tuple[str, ...] = ()
    """Query parameters left out of request fingerprints (timestamps, nonces)."""

    capture_ignore_fields: tuple[str, ...] = ()
    """JSON body fields left out of request fingerprints and of drift comparisons."""

    capture_fingerprint_headers: tuple[str, ...] = ("accept",)
    """Request headers that make two requests different in their fingerprint."""

    capture_retention: str | None = None
    """How long bodies are kept, e.g. ``30d``: ``tether capture prune`` deletes older ones
    (rows stay, marked ``pruned``). None: keep everything."""

    @field_validator("project_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments win, then the environment; the file is merged in `load`.
        return (init_settings, env_settings)

    @property
    def state_dir(self) -> Path:
        """The ``.tether`` folder of the project."""
        return self.project_dir / ".tether"

    @property
    def url(self) -> str:
        """The store URL, with the SQLite default filled in."""
        if self.database_url:
            return _anchor(self.database_url, self.project_dir)
        return f"sqlite:///{self.state_dir / 'tether.db'}"


def _anchor(url: str, root: Path) -> str:
    """A relative SQLite path in a project's settings means relative to the project."""
    if not url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or Path(database).expanduser().is_absolute():
        return url
    return parsed.set(database=str(root / database)).render_as_string(hide_password=False)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or remove it") from exc
    # Accept both a flat file and one with a [tether] table.
    table = data.get("tether", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tether] must be a table")
    return {k.replace("-", "_"): v for k, v in table.items()}


def load_settings(project_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Read settings for a project folder: ``tether.toml``, then ``TETHER_*``, then ``overrides``.

    Raises:
        ConfigError: a value is invalid; the message names the setting and where it came from.
    """
    env_project = os.environ.get("TETHER_PROJECT_DIR")
    root = Path(project_dir or env_project or Path.cwd()).expanduser().resolve()
    file_values: dict[str, Any] = {}
    config_path = root / CONFIG_FILE
    if config_path.is_file():
        file_values = _read_toml(config_path)
    env_names = {
        name for name in Settings.model_fields if f"TETHER_{name.upper()}" in os.environ
    }
    # Environment beats the file: drop file values the environment sets.
    values = {k: v for k, v in file_values.items() if k not in env_names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["project_dir"] = root
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        source = f"{config_path} or TETHER_* variables" if file_values else "TETHER_* variables"
        raise ConfigError(f"invalid settings ({source}): {problems}") from exc
