"""A migrated Airflow SQLite metadata DB, built once and copied into each test's AIRFLOW_HOME."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

DB_NAME = "airflow.db"


def migrate(home: Path) -> float:
    """Run `airflow db migrate` for an SQLite DB in HOME; the seconds it took."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / DB_NAME}",
    }
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (home / DB_NAME).is_file()
    return time.perf_counter() - started


def copy_db(template: Path, home: Path) -> Path:
    """Copy a migrated DB into HOME with SQLite's backup API (consistent whatever its journal)."""
    dest = home / DB_NAME
    with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(dest)) as target:
        source.backup(target)
    return dest
