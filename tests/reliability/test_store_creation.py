"""kill -9 while a store is first created (issue 16, item 14).

The kill lands at a known point of MLflow's own schema migrations: a subprocess hooks SQLAlchemy's
``after_cursor_execute`` and sends itself SIGKILL right after ``CREATE TABLE _alembic_tmp_model_version_tags``
(the table a cut-short migration leaves behind). MLflow used to build the store in place, so every later run
failed with ``table _alembic_tmp_model_version_tags already exists``; now it is built beside and linked into
place when complete, and a half-created store from before is moved aside and built again. Prefect's
embedded database (``$PREFECT_HOME/prefect.db``) needs no such help: the last test shows its migrations
are transactional, so the same kill leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ppo import PPOTrainer
from tests.helpers import ROOT, small_config

pytestmark = pytest.mark.reliability

KILL_MID_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy
    from sqlalchemy import event

    @event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
    def _kill(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP_MODEL_VERSION_TAGS"):
            os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[1] == "ppo":  # the project's way to open the store (every ppo command goes through it)
        from ppo.tracking.store import connect
        connect()
    else:  # MLflow's own, in place: what every store was created by before
        from mlflow.store.db.utils import _initialize_tables
        _initialize_tables(sqlalchemy.create_engine(sys.argv[2]))
    """
)


def _kill_mid_migration(home: Path, how: str) -> None:
    # no store template: the kill is aimed at the migrations a store without one runs
    env = {**os.environ, "PPO_HOME": str(home), "PPO_STORE_TEMPLATES": "0"}
    args = [sys.executable, "-c", KILL_MID_MIGRATION, how, f"sqlite:///{home / 'mlflow.db'}"]
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _train_tracked() -> dict:
    cfg = small_config(**{"train.seeds": [0], "train.max_env_steps": 128 * 5, "tracking.enabled": True})
    return PPOTrainer(config=cfg, enable_mlflow=True).train()


def test_kill_9_during_the_first_store_creation_leaves_no_half_store(ppo_home):
    _kill_mid_migration(ppo_home, "ppo")
    assert not (ppo_home / "mlflow.db").exists()  # only the temporary beside it was being migrated
    result = _train_tracked()
    assert result["run_id"]
    assert not list(ppo_home.glob(".mlflow.db.*"))  # the killed creator's temporary is cleaned up


def test_a_store_half_created_in_place_is_moved_aside_and_built_again(ppo_home):
    _kill_mid_migration(ppo_home, "mlflow")
    assert "_alembic_tmp_model_version_tags" in _tables(ppo_home / "mlflow.db")  # the reported state
    with pytest.warns(RuntimeWarning, match="half-created"):
        result = _train_tracked()
    assert result["run_id"]
    assert "_alembic_tmp_model_version_tags" not in _tables(ppo_home / "mlflow.db")
    assert len(list(ppo_home.glob("mlflow.db.half-created-*"))) == 1


PREFECT_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    import sqlalchemy
    from sqlalchemy import event

    if sys.argv[1] == "kill":
        @event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
        def _kill(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP_"):
                os.kill(os.getpid(), signal.SIGKILL)

    import asyncio
    from prefect.server.database import provide_database_interface
    # what Prefect's embedded server runs on start (PREFECT_API_DATABASE_MIGRATE_ON_START): every migration
    asyncio.run(provide_database_interface().create_db())
    """
)


def _prefect_migration(prefect_home: Path, how: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    args = [sys.executable, "-c", PREFECT_MIGRATION, how]
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_prefects_embedded_database_survives_kill_9_mid_migration(tmp_path):
    """Prefect's own migrations are already safe: each runs in a transaction (``BEGIN IMMEDIATE`` on
    SQLite, ``transaction_per_migration``), so a kill -9 inside one rolls it back, leaves no
    ``_alembic_tmp_*`` table, and the next start continues from the last complete migration. The database
    is ``$PREFECT_HOME/prefect.db``; ``ppo pipeline`` sets ``PREFECT_HOME=$PPO_HOME/prefect``."""
    home = tmp_path / "prefect"
    home.mkdir()
    killed = _prefect_migration(home, "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    db = home / "prefect.db"
    assert db.is_file() and not [t for t in _tables(db) if t.startswith("_alembic_tmp_")]
    again = _prefect_migration(home, "complete")
    assert again.returncode == 0, again.stderr[-2000:]
    import prefect.server.database
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    migrations = Path(prefect.server.database.__file__).parent / "_migrations"
    scripts = Config()
    scripts.set_main_option("script_location", str(migrations))
    scripts.set_main_option("version_locations", str(migrations / "versions" / "sqlite"))
    head = ScriptDirectory.from_config(scripts).get_current_head()  # Prefect's latest SQLite migration
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    assert not [t for t in _tables(db) if t.startswith("_alembic_tmp_")]
