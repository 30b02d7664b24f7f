"""Where runs are stored: the tracking URI, a checked connection, the client, experiments.

The store is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///$PPO_HOME/mlflow.db`` with artifacts in
``$PPO_HOME/mlartifacts``. An HTTP store is probed first, so an unreachable server fails fast with one
readable :class:`~ppo.tracking.probe.ServiceUnavailableError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from ppo.config import Config, confined_path, local_store_path, ppo_home
from ppo.tracking.probe import probe


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
    """Point MLflow at the store (checked reachable) and return a client."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    _use(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
        return client.get_experiment_by_name(name).experiment_id
