"""Empty, fully migrated sqlite stores, kept once per installed version and copied into new homes.

Why: a new ``$PPO_HOME`` needs two sqlite databases before anything runs. Prefect's embedded API creates
its own by running its schema migrations and registering its block types, about 10 s on this project's
2-core CPU (the largest part of a cold ``ppo pipeline``); MLflow's store runs dozens of migrations (~2 s).
For one installed version of either, the result is the same empty schema every time. So the first store
created for a version is copied (sqlite's online backup: a consistent copy even of a database in WAL
mode) into a template directory, and later new stores start as a copy of it.

What a template holds: the schema, its migration version, and, for Prefect, the block types and schemas
it registers on start; no runs, flows, keys or settings (checked before a template is kept). A template
is keyed by the package's version, so an upgrade builds a new one; a store built from it is checked by
its owner (Prefect migrates on start; MLflow's store is checked by ``ensure_sqlite_store``) as any
store is.

Where: ``<sys.prefix>/share/ppo-pipeline/store-templates`` (inside the virtual environment, so a new
venv builds its own), ``$PPO_STORE_TEMPLATES`` when set to a directory, none when it is ``0``. Nothing
here raises: a template that cannot be read or written is skipped and the store is created as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

TEMPLATES_ENV = "PPO_STORE_TEMPLATES"
_OFF = {"0", "off", "false", "no"}

#: per kind, the tables a template may hold rows in (anything else means the store was used: not kept)
_ALLOWED_ROWS = {
    "prefect": {"alembic_version", "block_type", "block_schema", "block_schema_reference"},
    "mlflow": {"alembic_version", "workspaces"},  # a migration adds the "default" workspace
}


#: the settings that point Prefect's server at another database than its default (current, legacy names)
PREFECT_DB_URL_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def prefect_database(prefect_home: Path) -> Path | None:
    """``prefect_home/prefect.db``, Prefect's default sqlite database, unless the environment names
    another database (then None: there is nothing to start from a template)."""
    if any(os.environ.get(key) for key in PREFECT_DB_URL_ENV):
        return None
    return prefect_home / "prefect.db"


def template_dir() -> Path | None:
    """Where templates are kept, or None when they are switched off (``PPO_STORE_TEMPLATES=0``)."""
    value = os.environ.get(TEMPLATES_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path(sys.prefix) / "share" / "ppo-pipeline" / "store-templates"


def template_path(kind: str, version: str) -> Path | None:
    """The template of ``kind`` (``prefect`` or ``mlflow``) for the installed ``version`` (may not exist)."""
    if kind not in _ALLOWED_ROWS:
        raise ValueError(f"unknown store kind {kind!r}; known: {', '.join(_ALLOWED_ROWS)}")
    root = template_dir()
    return None if root is None else root / f"{kind}-{version}.db"


def copy_template(kind: str, version: str, dest: Path) -> bool:
    """Create ``dest`` as a copy of the template; False (``dest`` untouched) when there is no template,
    ``dest`` or a journal of an earlier ``dest`` (``-wal``, ``-shm``, ``-journal``: sqlite would replay it
    onto the copy) exists, or the copy fails. The copy is checked as a template is before it is kept (a
    damaged template is removed, to be built again) and linked into place only when complete, so a reader
    never sees half a file and two processes never both create ``dest``."""
    src = template_path(kind, version)
    if src is None or not src.is_file() or dest.exists():
        return False
    if any(dest.with_name(dest.name + suffix).exists() for suffix in ("-wal", "-shm", "-journal")):
        return False
    with _staged(dest, "template") as tmp:
        try:
            shutil.copyfile(src, tmp)
            try:
                with contextlib.closing(sqlite3.connect(tmp)) as copy:  # our own private file: no lock
                    fresh = _is_fresh(copy, kind)
            except sqlite3.DatabaseError:  # "file is not a database", a malformed page
                fresh = False
            if not fresh:
                with contextlib.suppress(OSError):
                    src.unlink()
                return False
            _publish(tmp, dest)
            return True
        except (OSError, sqlite3.Error):
            return False


def save_template(kind: str, version: str, source: Path) -> bool:
    """Keep a snapshot of the fresh store ``source`` as the template for ``version``, unless one exists or
    ``source`` holds anything a new store would not (then False). Never raises."""
    dest = template_path(kind, version)
    if dest is None or dest.exists() or not source.is_file():
        return False
    with _staged(dest, "saving") as tmp:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            read_only = source.resolve().as_uri() + "?mode=ro"  # as_uri: '?', '#' or '%' in the path escaped
            with contextlib.closing(sqlite3.connect(read_only, uri=True, timeout=5)) as src:
                with contextlib.closing(sqlite3.connect(tmp)) as out:
                    src.backup(out)
            with contextlib.closing(sqlite3.connect(tmp)) as out:
                out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                if not _is_fresh(out, kind):
                    return False
            _publish(tmp, dest)
            return True
        except (OSError, sqlite3.Error):
            return False


@contextlib.contextmanager
def _staged(dest: Path, what: str) -> Iterator[Path]:
    """A private temporary path beside ``dest`` to build it in, removed on the way out whatever happens
    (once published it is a second link to the same file)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{what}")
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _publish(tmp: Path, dest: Path) -> None:
    """Make the complete file ``tmp`` durable and link it as ``dest``: a reader never sees half a file, and
    ``os.link`` raises (FileExistsError) when another process created ``dest`` meanwhile: theirs is used."""
    _fsync(tmp)
    os.link(tmp, dest)


def _is_fresh(db: sqlite3.Connection, kind: str) -> bool:
    """A complete (migrated: ``alembic_version`` set), sound store with rows only in ``kind``'s allowed
    tables."""
    if db.execute("PRAGMA quick_check").fetchone() != ("ok",):
        return False
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    if "alembic_version" not in tables or not db.execute("SELECT 1 FROM alembic_version").fetchone():
        return False
    allowed = _ALLOWED_ROWS[kind]
    for table in tables:
        if table not in allowed and db.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
            return False
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
