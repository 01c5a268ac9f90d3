"""The PostgreSQL engine's session settings."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import text

from tether.store import Store


def _show(store: Store, setting: str) -> str:
    with store.engine.connect() as conn:
        return str(conn.execute(text(f"SHOW {setting}")).scalar_one())


def test_postgres_sessions_plan_every_statement_with_its_values(pg_url: str) -> None:
    # A generic plan made while a new store's tables had no statistics would stay and
    # scan ever larger tables; the store's sessions never keep one.
    with Store.open(pg_url) as store:
        assert _show(store, "plan_cache_mode") == "force_custom_plan"
        assert _show(store, "synchronous_commit") == "on"
    with Store.open(pg_url, durability="relaxed") as store:
        assert _show(store, "plan_cache_mode") == "force_custom_plan"
        assert _show(store, "synchronous_commit") == "off"


def test_options_in_the_url_are_kept_and_win(pg_url: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{sep}options={quote('-c plan_cache_mode=auto -c work_mem=8MB')}"
    with Store.open(url) as store:
        assert _show(store, "plan_cache_mode") == "auto"
        assert _show(store, "work_mem") == "8MB"
