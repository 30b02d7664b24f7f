"""The model registry: versions registered from runs, the ``champion`` alias, and what a version carries.

Only the pipeline's register task registers (training never does); a version becomes champion only with
the tag ``gate.passed=true`` that the register task writes after a passed gate. Registration is
idempotent per run id.

Integrity: registration records ``model.sha256``, one digest over every file of the model
(:func:`ppo.tracking.model.folder_digest`), as a version tag; :func:`verify_version` checks a download
against it (``ppo serve`` and the gate's champion evaluation), so files changed after registration are
refused (:class:`ModelIntegrityError`, or :class:`BrokenVersionError` for the champion in the gate).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunTag

from ppo.config import ppo_home
from ppo.tracking.model import ModelIntegrityError, folder_digest
from ppo.tracking.store import client

CHAMPION = "champion"
#: the version tag holding :func:`ppo.tracking.model.folder_digest` of the model, written at registration
DIGEST_TAG = "model.sha256"


def find_version(model_name: str, run_id: str, uri: str | None = None) -> str | None:
    """The version registered from ``run_id`` under ``model_name`` (the first, if several), or None."""
    existing = [v for v in client(uri).search_model_versions(f"name='{model_name}'") if v.run_id == run_id]
    return str(min(int(v.version) for v in existing)) if existing else None


def register_model(
    run_id: str, model_name: str, tags: dict[str, Any] | None = None, uri: str | None = None
) -> str:
    """Register the run's model under ``model_name``; a second call for the same run returns the same version.

    Called by the pipeline's register task only (training never registers)."""
    c = client(uri)
    existing = find_version(model_name, run_id, uri)
    if existing is not None:
        return existing
    run = c.get_run(run_id)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise ValueError(f"run {run_id} has no logged model: nothing to register")
    with tempfile.TemporaryDirectory() as tmp:  # the digest of the files as they are when registered
        digest = folder_digest(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
    # mlflow.register_model prints "Successfully registered model ..." / "Created version ..." to stderr
    # (its eprint); the register task logs one line of its own instead
    from mlflow.utils.logging_utils import disable_logging, enable_logging

    disable_logging()
    try:
        version = mlflow.register_model(
            model_uri,
            model_name,
            tags={
                "run_id": run_id,
                "config_hash": run.data.tags.get("config_hash", ""),
                DIGEST_TAG: digest,
                **{k: str(v) for k, v in (tags or {}).items()},
            },
        )
    finally:
        enable_logging()
    return str(version.version)


def verify_version(model_name: str, version: str | int, local: str | Path) -> None:
    """Check a downloaded model folder against the version's ``model.sha256`` tag; raise
    :class:`ModelIntegrityError` (one line, naming the version) when they differ. A version registered
    before digests were recorded has no tag: nothing to check it against (its files are still checked
    against their ``digests.json`` when loaded, if the model has one)."""
    expected = client().get_model_version(model_name, str(version)).tags.get(DIGEST_TAG)
    if not expected:
        return
    actual = folder_digest(local)
    if actual != expected:
        raise ModelIntegrityError(
            f"{model_name} version {version}: its model files do not match the digest recorded at "
            f"registration (tag {DIGEST_TAG}: {expected[:12]}..., files now: {actual[:12]}...); they were "
            "changed after registration; refusing to use them"
        )


def resolve_version(uri: str) -> tuple[str, str] | None:
    """``(model name, version)`` of a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` URI; None
    for other URIs (a run's model, a folder), which have no version tag to verify."""
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :].strip("/")
    c = client()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(c.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        return None
    return name, version


def download_verified(uri: str, dst: str | Path) -> Path:
    """Download the model at ``uri`` into ``dst`` and verify it against its version's digest tag (for a
    registered version); the caller serves these very files, so what was checked is what is served.
    Raises :class:`FileNotFoundError` (one line) when there is no such model or its files are gone."""
    try:
        target = resolve_version(uri)
        if target is not None:  # pin an alias to the version it points at now: the files checked are its own
            uri = f"models:/{target[0]}/{target[1]}"
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))
    except (mlflow.exceptions.MlflowException, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise FileNotFoundError(f"cannot download the model {uri}: {first[:300]}") from None
    if target is not None:
        verify_version(*target, local)
    return local


class UngatedVersionError(ValueError):
    """A model version without a passed gate cannot become champion."""


def set_champion(model_name: str, version: str | int, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version``, which must carry the tag ``gate.passed=true`` that the pipeline's
    register task writes after a passed gate: a version registered by hand, or gated out, never serves."""
    c = client()
    tags = c.get_model_version(model_name, str(version)).tags
    if tags.get("gate.passed") != "true":
        raise UngatedVersionError(
            f"{model_name} version {version} has no passed gate "
            f"(tag gate.passed={tags.get('gate.passed')!r}): "
            "only a version gated by the pipeline (train-ppo or promote-model) can become champion"
        )
    c.set_registered_model_alias(model_name, alias, str(version))


def get_champion(model_name: str, alias: str = CHAMPION) -> str | None:
    info = champion_info(model_name, alias)
    return info["version"] if info else None


def load_model(uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` (e.g. ``models:/ppo-cartpole@champion``)."""
    client()
    return mlflow.pyfunc.load_model(uri)


class BrokenVersionError(RuntimeError):
    """A registered version whose model files are missing or unreadable (its artifacts were deleted)."""


def version_params(model_name: str, version: str | int) -> tuple[Any, dict[str, Any]]:
    """The flax params and policy metadata of a registered model version (read from its artifacts:
    ``params.msgpack`` and ``agent.json``, or ``policy.json`` in models logged before it).

    Raises :class:`BrokenVersionError`, naming the version and what is missing, when they cannot be read
    (it used to surface as ``RuntimeError: coroutine raised StopIteration`` in the gate)."""
    from flax import serialization

    mv = client().get_model_version(model_name, str(version))
    where = f"{model_name} version {mv.version} (model {mv.source})"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=tmp))
        except (mlflow.exceptions.MlflowException, OSError) as e:
            raise BrokenVersionError(f"{where}: its artifacts cannot be downloaded: {e}") from None
        # missing files first (a deleted artifact is named as such), then the digest of what is there
        params_file = next(local.rglob("params.msgpack"), None)
        meta_file = next(local.rglob("agent.json"), None) or next(local.rglob("policy.json"), None)
        missing = [n for n, f in (("params.msgpack", params_file), ("agent.json", meta_file)) if f is None]
        if params_file is None or meta_file is None:
            raise BrokenVersionError(f"{where}: {' and '.join(missing)} missing from its artifacts")
        try:
            verify_version(model_name, mv.version, local)
        except ModelIntegrityError as e:  # tampered files are as unusable as missing ones
            raise BrokenVersionError(str(e)) from None
        try:
            params = serialization.msgpack_restore(params_file.read_bytes())
            meta = json.loads(meta_file.read_text())
        except Exception as e:  # noqa: BLE001 - any failure here means the files are unusable
            raise BrokenVersionError(f"{where}: its model files are unreadable: {e}") from None
    return params, {**meta, "run_id": mv.run_id, "version": str(mv.version)}


def champion_info(model_name: str, alias: str = CHAMPION) -> dict[str, str | None] | None:
    """The version ``alias`` points at and its run (None for a version registered without a run), or None
    when the alias is not set."""
    try:
        mv = client().get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return {"version": str(mv.version), "run_id": mv.run_id}


def run_start_ms(run_id: str) -> int:
    """When a run started (ms since the epoch): what "older" means for the champion's recency rule."""
    return int(client().get_run(run_id).info.start_time)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def fetch_version_run(model_name: str, version: str | int) -> dict[str, Any]:
    """Download a version's run config (``config.yaml``) and final checkpoint into
    ``$PPO_HOME/registry/<run>``.

    Returns ``{"run_id", "config", "checkpoint_dir"}``; the config's checkpoint_dir points at the download.
    """
    import re

    import yaml

    from ppo.config import build_config

    mv = client().get_model_version(model_name, str(version))
    if not re.fullmatch(r"[0-9a-f]{32}", mv.run_id or ""):
        raise ValueError(f"{model_name} version {version}: unexpected run id {mv.run_id!r}")
    target = ppo_home() / "registry" / str(mv.run_id)  # a str: the 32-hex check above
    target.mkdir(parents=True, exist_ok=True)
    try:
        cfg_file = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="config.yaml", dst_path=str(target)
        )
        (target / "checkpoint").mkdir(exist_ok=True)
        mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path="checkpoint/checkpoint.msgpack",
            dst_path=str(target / "checkpoint"),
        )
    except mlflow.exceptions.MlflowException as e:
        raise FileNotFoundError(
            f"{model_name} version {version}: its run {mv.run_id} has no config.yaml or "
            f"checkpoint artifact to re-gate from ({e})"
        ) from None
    data = yaml.safe_load(Path(cfg_file).read_text())
    # what was trained comes from the run; the gate and registry settings come from the caller (and runs
    # of older versions stored keys those sections no longer have)
    data = {k: v for k, v in data.items() if k not in ("gate", "registry")}
    data.setdefault("train", {})["checkpoint_dir"] = str(target / "checkpoint")
    return {
        "run_id": mv.run_id,
        "config": build_config(data).to_dict(),
        "checkpoint_dir": str(target / "checkpoint"),
    }


def tag_version(model_name: str, version: str | int, tags: dict[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(
            model_name, str(version), k, str(v).lower() if isinstance(v, bool) else str(v)
        )


def log_report(run_id: str, directory: Path) -> None:
    client().log_artifacts(run_id, str(directory), artifact_path="report")


#: where ``make serve`` (and ``ppo ui``) show a local store: MLflow's UI on this port unless ``MLFLOW_PORT``
#: says otherwise (scripts/serve.sh reads the same variable)
DEFAULT_UI_PORT = 5000


def ui_base() -> str:
    """The MLflow UI that shows this store: the server itself for an HTTP store; for a local store the
    address ``make serve`` / ``ppo ui`` serve it on (``http://127.0.0.1:$MLFLOW_PORT``, default 5000), so a
    link written into a report or a Prefect artifact opens once either runs."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return uri.rstrip("/")
    port = os.environ.get("MLFLOW_PORT", "").strip() or str(DEFAULT_UI_PORT)
    return f"http://127.0.0.1:{port}"


def run_url(run_id: str) -> str:
    """The MLflow UI page of a run (see :func:`ui_base` for a local store)."""
    run = client().get_run(run_id)
    return f"{ui_base()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def artifact_url(run_id: str, path: str) -> str:
    """The MLflow UI page that shows one artifact of a run (it renders HTML and images)."""
    return f"{run_url(run_id)}/artifacts/{path}"


def version_url(model_name: str, version: str | int) -> str:
    """The MLflow UI page of a registered model version."""
    return f"{ui_base()}/#/models/{model_name}/versions/{version}"
