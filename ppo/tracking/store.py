"""Where runs are stored: the tracking URI, a checked connection, the client, experiments.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///$PPO_HOME/mlflow.db`` with artifacts in
``$PPO_HOME/mlartifacts``. An HTTP store is probed first, so an unreachable server fails fast with one
readable :class:`~ppo.tracking.probe.ServiceUnavailableError`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from ppo import atomic, store_templates
from ppo.config import Config, confined_path, ppo_home
from ppo.tracking.probe import probe
from ppo.tracking.uris import local_store_path


def _client_defaults() -> None:
    """Bounded HTTP retries for MLflow's own client: seconds, not the default minutes (unless the user set
    them). MLflow reads them per request; :func:`check_reachable`, which every connection starts with,
    sets them, so a ``mlflow`` process that ``ppo serve`` starts inherits them too."""
    for key, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
    ):
        os.environ.setdefault(key, value)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the sqlite store in ``$PPO_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ppo_home() / 'mlflow.db'}"


def config_store_uri(config: Config) -> str | None:
    """The store a config names (``tracking.tracking_uri``; a relative local store is taken from
    ``$PPO_HOME``), or ``None`` for the default (:func:`default_tracking_uri`)."""
    uri = config.tracking.tracking_uri
    local = None if uri is None else local_store_path(uri)
    if uri is not None and local is not None:
        path = confined_path(local)
        uri = f"sqlite:///{path}" if uri.startswith("sqlite") else path.as_uri()
    return uri


def run_exists(client: MlflowClient, run_id: str | None) -> bool:
    """Whether ``run_id`` is a live run in ``client``'s store. False when the store no longer has it (an
    emptied or replaced ``mlflow.db``) or it was deleted; any other error (the server is down) is raised,
    so an outage never passes for lost state."""
    if not run_id:
        return False
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return run.info.lifecycle_stage == "active"


def default_artifact_root() -> str:
    return (ppo_home() / "mlartifacts").as_uri()


def _use(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without leaving ``MLFLOW_TRACKING_URI`` behind: MLflow exports
    it, and the echo would later outrank ``$PPO_HOME`` as if the user had set it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def check_reachable(uri: str, attempts: int = 3) -> None:
    """For an HTTP tracking URI, probe ``/health`` a few times; raise one readable error if it stays down."""
    _client_defaults()
    if uri.startswith(("http://", "https://")):
        probe(
            uri.rstrip("/") + "/health",
            f"MLflow tracking server {uri}",
            "Start it (make serve) or unset MLFLOW_TRACKING_URI to use the local store in $PPO_HOME.",
            attempts,
        )


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (checked reachable, a local sqlite store created whole) and return a
    client."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        ensure_sqlite_store(Path(uri[len("sqlite:///") :]))
    check_reachable(uri)
    _use(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not uri.startswith(("http://", "https://")):
        _hold_interrupts_in_transactions(client)
    return client


def _hold_interrupts_in_transactions(client: MlflowClient) -> None:
    """Run every transaction of ``client``'s database stores (tracking and registry) with Ctrl-C and
    SIGTERM held (:func:`ppo.interrupts.held`), so that an interrupt never lands half-way through one and
    leaves the database locked for the writes that end the runs KILLED (the module says why).

    MLflow opens each transaction with its store's ``ManagedSessionMaker``; the stores are shared by every
    client and the fluent API of this process (MLflow caches them per URI), so this covers the model
    logging and the registry too. A store without one (a file store: no transactions) is left alone; an
    HTTP store is not passed here (a request to a slow server must stay interruptible).
    """
    from ppo.interrupts import held

    stores = [client._tracking_client.store, client._get_registry_client().store]
    for store in stores:
        sessions = getattr(store, "ManagedSessionMaker", None)
        if sessions is None or getattr(sessions, "holds_interrupts", False):
            continue

        def holding(*args: Any, _sessions: Any = sessions, **kwargs: Any) -> Any:
            with held(), _sessions(*args, **kwargs) as session:
                yield session

        wrapped = contextlib.contextmanager(holding)
        wrapped.holds_interrupts = True  # type: ignore[attr-defined]
        store.ManagedSessionMaker = wrapped


class StoreError(RuntimeError):
    """A local store that cannot be used as it is (and could not be repaired without losing runs)."""


def _sqlite_tables(path: Path) -> set[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _half_created(path: Path) -> str | None:
    """Why the sqlite store at ``path`` is a half-created one (its first schema migration was cut short:
    ``_alembic_tmp_*`` tables left, or a schema older than this MLflow's while it holds no data), or
    ``None``. A store holding runs or models is never called half-created: MLflow's own upgrade path
    (``mlflow db upgrade``) is the way for it."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    tables = _sqlite_tables(path)
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        version = None
        if "alembic_version" in tables:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
        if version == _get_latest_schema_revision() and not leftovers:
            return None
        for table in ("runs", "registered_models", "logged_models"):
            if table in tables and db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:
                if leftovers:
                    raise StoreError(
                        f"the MLflow store {path} holds runs but a schema migration was cut short "
                        f"(tables {', '.join(leftovers)} left behind): back it up, drop those tables and run "
                        f"`mlflow db upgrade sqlite:///{path}`"
                    )
                return None  # an older store with data: MLflow says how to upgrade it
    if leftovers:
        return f"its first schema migration was cut short ({', '.join(leftovers)} left behind)"
    head = _get_latest_schema_revision()
    return f"its schema is at {version or 'no version'}, not {head}, and it holds no data"


def ensure_sqlite_store(path: Path) -> None:
    """Make sure a complete MLflow sqlite store exists at ``path``, created atomically.

    Why: MLflow creates a store in place, running dozens of schema migrations over a few seconds; a
    ``kill -9`` in between left ``_alembic_tmp_model_version_tags`` behind and every later run failed with
    ``table _alembic_tmp_model_version_tags already exists``. Here the store is built and migrated in a
    temporary file beside ``path`` and linked into place only when complete (``os.link`` fails when another
    process got there first, whose store is then used). A half-created store left by an earlier crash,
    holding no runs, is moved aside (``<name>.half-created-<time>``) and built again, with a warning.
    """
    if path.is_file() and path.stat().st_size > 0:
        why = _half_created(path)
        if why is None:
            return
        aside = path.with_name(f"{path.name}.half-created-{int(time.time())}")
        os.replace(path, aside)
        warnings.warn(
            f"the MLflow store {path} was half-created ({why}); it held no runs and was moved to {aside}; "
            "a new store is created",
            RuntimeWarning,
            stacklevel=2,
        )
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.creating"):  # left by a creator that was killed
        pid = stale.name.rsplit(".", 2)[-2]
        if not (pid.isdigit() and pid_alive(int(pid))):
            with contextlib.suppress(OSError):
                stale.unlink()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        # from the installed MLflow's template when there is one (ppo.store_templates), else migrated
        if not store_templates.copy_template("mlflow", mlflow.__version__, tmp):
            engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            store_templates.save_template("mlflow", mlflow.__version__, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.is_file() and path.stat().st_size == 0:  # an emptied store file: replaced whole
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process created it meanwhile: theirs is used
                pass
    except OSError as e:
        if e.errno not in atomic.NO_SPACE or isinstance(e, atomic.DiskFullError):
            raise
        size = tmp.stat().st_size if tmp.exists() else 0
        raise atomic.DiskFullError(e.errno, atomic.no_space_message(path, size, e)) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0; one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_CLIENTS: dict[str, MlflowClient] = {}


def client(uri: str | None = None) -> MlflowClient:
    """A client for ``uri`` or the configured store (connecting, with the reachability check, once per URI);
    MLflow's fluent API is pointed at the same store."""
    uri = uri or default_tracking_uri()
    if uri not in _CLIENTS:
        _CLIENTS[uri] = connect(uri)
    _use(uri)
    return _CLIENTS[uri]


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = client._tracking_client.tracking_uri
    location = default_artifact_root() + f"/{name}" if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:  # not a concurrent creation: the error was real
            raise
        return exp.experiment_id
