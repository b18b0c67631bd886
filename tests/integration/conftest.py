"""Integration fixtures: one migrated Airflow metadata DB per session, copied by each Airflow test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import airflow_db


@pytest.fixture(scope="session")
def airflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite DB `airflow db migrate` created: 10-30 s, so once per session."""
    home = tmp_path_factory.mktemp("airflow_db_template")
    print(f"airflow db migrate: {airflow_db.migrate(home):.1f}s")
    return home / airflow_db.DB_NAME
