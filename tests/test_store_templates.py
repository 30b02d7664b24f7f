"""Store templates (ppo/store_templates.py): a new home's MLflow and Prefect databases start as a copy of
an empty, migrated one kept per installed version, and work as ones created from scratch do."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from ppo import store_templates
from ppo.tracking import store
from tests.helpers import ROOT


@pytest.fixture
def templates(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "templates"
    monkeypatch.setenv(store_templates.TEMPLATES_ENV, str(path))
    return path


def _db(path: Path, *statements: str) -> Path:
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    return path


FRESH = (
    "CREATE TABLE alembic_version (version_num TEXT)",
    "INSERT INTO alembic_version VALUES ('abc')",
    "CREATE TABLE runs (id TEXT)",
)


def test_a_fresh_store_is_kept_and_copied_whole(tmp_path, templates):
    source = _db(tmp_path / "fresh.db", *FRESH)
    assert store_templates.save_template("mlflow", "1.0", source)
    assert (templates / "mlflow-1.0.db").is_file()
    assert not store_templates.save_template("mlflow", "1.0", source)  # one template per version
    dest = tmp_path / "home" / "mlflow.db"
    dest.parent.mkdir()
    assert store_templates.copy_template("mlflow", "1.0", dest)
    with sqlite3.connect(dest) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("abc",)]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mlflow.db"]  # no temporary left
    # another version has no template; an existing store is never overwritten
    assert not store_templates.copy_template("mlflow", "2.0", tmp_path / "home" / "other.db")
    _db(tmp_path / "home" / "taken.db", "CREATE TABLE mine (x)")
    assert not store_templates.copy_template("mlflow", "1.0", tmp_path / "home" / "taken.db")
    with sqlite3.connect(tmp_path / "home" / "taken.db") as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("mine",)]


def test_a_used_or_unmigrated_store_is_not_kept(tmp_path, templates):
    used = _db(tmp_path / "used.db", *FRESH, "INSERT INTO runs VALUES ('r1')")
    assert not store_templates.save_template("mlflow", "1.0", used)
    unmigrated = _db(tmp_path / "unmigrated.db", "CREATE TABLE alembic_version (version_num TEXT)")
    assert not store_templates.save_template("mlflow", "1.0", unmigrated)
    assert not (templates / "mlflow-1.0.db").exists()
    assert not list(templates.glob(".*"))  # nor half a file


def test_a_damaged_template_is_not_copied_and_is_dropped(tmp_path, templates):
    """A template that no longer reads as a fresh store (a torn disk write, a stray edit) gives no copy
    and is removed, so the next store is created by its migrations and becomes the template again."""
    assert store_templates.save_template("mlflow", "1.0", _db(tmp_path / "fresh.db", *FRESH))
    template = templates / "mlflow-1.0.db"
    _db(template, "INSERT INTO runs VALUES ('edited in')")  # now holds a run: not a new store
    dest = tmp_path / "home" / "mlflow.db"
    dest.parent.mkdir()
    assert not store_templates.copy_template("mlflow", "1.0", dest)
    assert not dest.exists() and not template.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # no temporary left
    template.write_bytes(b"not a database" * 100)
    assert not store_templates.copy_template("mlflow", "1.0", dest)
    assert not dest.exists() and not template.exists()


def test_no_copy_beside_an_old_stores_journal(tmp_path, templates):
    """A deleted store's ``-wal`` (or ``-shm``, ``-journal``) left beside it would be replayed by sqlite
    onto the copy: no copy then (the owner creates the store, and sqlite deals with its journal)."""
    assert store_templates.save_template("mlflow", "1.0", _db(tmp_path / "fresh.db", *FRESH))
    for suffix in ("-wal", "-shm", "-journal"):
        home = tmp_path / f"home{suffix}"
        home.mkdir()
        (home / f"mlflow.db{suffix}").write_bytes(b"left over")
        assert not store_templates.copy_template("mlflow", "1.0", home / "mlflow.db"), suffix
        assert not (home / "mlflow.db").exists()
    assert (templates / "mlflow-1.0.db").is_file()  # the template itself is fine


def test_a_store_path_with_uri_characters_is_kept(tmp_path, templates):
    folder = tmp_path / "odd?name#50%"
    folder.mkdir()
    assert store_templates.save_template("mlflow", "1.0", _db(folder / "fresh.db", *FRESH))


def test_templates_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(store_templates.TEMPLATES_ENV, "0")
    assert store_templates.template_dir() is None
    assert not store_templates.save_template("mlflow", "1.0", _db(tmp_path / "fresh.db", *FRESH))
    monkeypatch.delenv(store_templates.TEMPLATES_ENV)
    assert store_templates.template_dir() == Path(sys.prefix) / "share" / "ppo-pipeline" / "store-templates"


def test_prefect_elsewhere_has_no_default_database(tmp_path, monkeypatch):
    for key in store_templates.PREFECT_DB_URL_ENV:
        monkeypatch.delenv(key, raising=False)
    assert store_templates.prefect_database(tmp_path) == tmp_path / "prefect.db"
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://x/y")
    assert store_templates.prefect_database(tmp_path) is None


def test_the_second_mlflow_store_is_the_first_ones_template_and_works(tmp_path, templates, monkeypatch):
    first = tmp_path / "a" / "mlflow.db"
    store.ensure_sqlite_store(first)
    template = templates / f"mlflow-{mlflow.__version__}.db"
    assert template.is_file()

    import mlflow.store.db.utils as db_utils

    def no_migrations(engine):
        raise AssertionError("the store should come from the template, not from migrations")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    second = tmp_path / "b" / "mlflow.db"
    store.ensure_sqlite_store(second)
    client = mlflow.MlflowClient(f"sqlite:///{second}")
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}
    assert not list(second.parent.glob(".*"))


START_API = """
import os, sqlite3, sys
os.environ["PREFECT_HOME"] = sys.argv[1]
from flows.cli import _start_embedded_api
_start_embedded_api()
import urllib.request
with urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=10) as answer:
    assert answer.status == 200
print(sorted(i for (i,) in sqlite3.connect(sys.argv[1] + "/prefect.db").execute("SELECT id FROM block_type")))
"""


def test_a_new_prefect_home_starts_from_the_first_ones_database(tmp_path, templates):
    """The first embedded API keeps its new database as the template; the next home's database is a copy of
    it (the same block type ids, which a database created anew would draw afresh) and serves."""
    env = {**os.environ, store_templates.TEMPLATES_ENV: str(templates)}
    for key in (*store_templates.PREFECT_DB_URL_ENV, "PREFECT_API_URL"):
        env.pop(key, None)
    ids = []
    for name in ("first", "second"):
        home = tmp_path / name
        home.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", START_API, str(home)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        ids.append(proc.stdout.strip().splitlines()[-1])
        if name == "first":
            assert sorted(p.name for p in templates.iterdir()) == [f"prefect-{_prefect_version()}.db"]
    assert ids[0] == ids[1] and len(ids[0]) > 10


def _prefect_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("prefect")
