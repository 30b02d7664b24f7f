"""MLflow adapter: the only place (with :mod:`ppo.serving`) where ``ppo`` touches MLflow.

* Store: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///$PPO_HOME/mlflow.db`` with artifacts in
  ``$PPO_HOME/mlartifacts``.
* :class:`MLflowLogger`: params (dotted config names), metrics with DESIGN.md's keys at step = env steps,
  batched through ``log_batch``; per-seed curves as metric suffixes ``.../seed_<n>``; artifacts
  (config YAML, history CSV, final checkpoint) and the policy model (models-from-code, no pickle).
* Registry helpers: idempotent registration per run id, alias ``champion`` get/set, load by alias.
* An unreachable server fails fast with one readable :class:`TrackingUnavailableError`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ppo.config import Config, confined_path, local_store_path, ppo_home
from ppo.net import ServiceUnavailableError, probe

CHAMPION = "champion"
# Usage telemetry off unless the user turns it on: its background sends cost ~3% of a short training run
# on 2 cores (and nothing leaves a machine without the user's say). The one default set at import:
# ``import mlflow`` below reads it (and otherwise starts its telemetry client and writes an installation
# id under ~/.config/mlflow) before any function here runs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _client_defaults() -> None:
    """Bounded HTTP retries for MLflow's own client: seconds, not the default minutes (unless the user set
    them). MLflow reads them per request; :func:`check_reachable`, which every connection starts with,
    sets them, so a ``mlflow`` process that ``ppo serve`` starts inherits them too."""
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)


import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

METRIC_KEYS = {
    "episode_return": "train/episode_return",
    "avg_reward": "train/avg_reward",
    "episodes": "train/episodes",
    "env_steps": "train/env_steps",
    "loss/policy": "loss/policy",
    "loss/value": "loss/value",
    "loss/entropy": "loss/entropy",
    "loss/approx_kl": "loss/approx_kl",
    "loss/clip_fraction": "loss/clip_fraction",
    "grad_norm": "grad_norm",
    "eval/return_mean": "eval/return_mean",
    "eval/return_std": "eval/return_std",
    "env_steps_per_s": "perf/env_steps_per_s",
}


TrackingUnavailableError = ServiceUnavailableError  # the MLflow server cannot be reached (bounded retries)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the sqlite store in ``$PPO_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ppo_home() / 'mlflow.db'}"


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
        probe(uri.rstrip("/") + "/health", f"MLflow tracking server {uri}",
              "Start it (make serve) or unset MLFLOW_TRACKING_URI to use the local store in $PPO_HOME.", attempts)


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (checked reachable) and return a client."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("jax", "flax", "optax", "gymnax", "mlflow"):
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"version.{pkg}"] = "missing"
    return out


class MLflowLogger:
    """Logs one training run to MLflow (the reference's ``MLflowLogger``).

    Metrics are buffered and written with ``log_batch`` every ``flush_every_s`` seconds or
    ``flush_every_metrics`` metrics, and at the end, so tracking costs little next to training.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "ppo-cartpole",
                 run_name: str | None = None, flush_every_s: float = 5.0, flush_every_metrics: int = 900,
                 outage_tolerance_s: float = 60.0, parent_run_id: str | None = None) -> None:
        self.client = connect(tracking_uri)
        self.tracking_uri = self.client._tracking_client.tracking_uri
        self.experiment = experiment
        self.experiment_id = get_or_create_experiment(self.client, experiment)
        self.run_name = run_name
        self.parent_run_id = parent_run_id  # nests this run under another (a sweep's trials)
        self.run_id: str | None = None
        self.flush_every_s = flush_every_s
        self.flush_every_metrics = flush_every_metrics
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self.logging_s = 0.0  # all time spent in this logger
        self.final_logging_s = 0.0  # of which: end-of-run artifacts, model logging and registration
        self.start_s = 0.0  # and: creating the run and logging the params
        self.outage_tolerance_s = outage_tolerance_s
        self._outage_since: float | None = None  # monotonic time the server was first found unreachable
        self._outage_error: BaseException | None = None
        self._next_probe = 0.0

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> MLflowLogger:
        uri = config.tracking.tracking_uri
        local = None if uri is None else local_store_path(uri)
        if uri is not None and local is not None:  # relative local stores are taken from $PPO_HOME
            path = confined_path(local)
            uri = f"sqlite:///{path}" if uri.startswith("sqlite") else path.as_uri()
        return cls(uri, config.experiment_name, outage_tolerance_s=config.tracking.outage_tolerance_s, **kwargs)

    # ---- run lifecycle ----
    def start(self, config: Config, resumed: bool = False, run_dir: Path | None = None) -> str:
        """Create the run (or, when resuming, reopen the one recorded in ``run_dir``) and log params/tags."""
        t = time.perf_counter()
        marker = Path(run_dir) / "mlflow_run.json" if run_dir else None
        if resumed and marker is not None and marker.is_file():
            previous = json.loads(marker.read_text())
            if previous.get("tracking_uri") == self.tracking_uri:
                try:
                    self.client.update_run(previous["run_id"], status="RUNNING")
                    self.run_id = previous["run_id"]
                except mlflow.exceptions.MlflowException:
                    self.run_id = None
        if self.run_id is None:
            import jax

            tags = {"config_hash": config.config_hash(), "git_commit": _git_commit(), "env_id": config.env.id,
                    "seeds": json.dumps(list(config.train.seeds)), "device": jax.devices()[0].device_kind,
                    "platform": jax.devices()[0].platform, "device_count": str(jax.device_count()),
                    "host": platform.node(), **_versions()}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
            params = [Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
                      for k, v in config.flat().items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri}))
        self.start_s = time.perf_counter() - t
        self.logging_s += self.start_s
        return self.run_id

    def log_row(self, row: dict[str, Any]) -> None:
        """Queue one history row's metrics (step = env steps)."""
        t = time.perf_counter()
        step, ts = int(row["env_steps"]), int(time.time() * 1000)
        for key, value in row.items():
            if value is None or key in ("chunk", "update", "wall_s", "converged_seeds"):
                continue
            name = METRIC_KEYS.get(key)
            if name is None and "/seed_" in key:
                base, seed = key.split("/seed_")
                name = f"{METRIC_KEYS.get(base, base)}/seed_{seed}"
            if name is not None:
                self._buffer.append(Metric(name, float(value), ts, step))
        if len(self._buffer) >= self.flush_every_metrics or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()
        self.logging_s += time.perf_counter() - t

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None)
        self.flush()

    def flush(self) -> None:
        """Write the buffered metrics. While the server is unreachable, keep them (training goes on) and
        retry on later flushes; after ``outage_tolerance_s`` raise one :class:`TrackingUnavailableError`."""
        if self._outage_since is not None and not self._back_up():
            return
        try:
            while self._buffer:
                self.client.log_batch(self.run_id, metrics=self._buffer[:1000])
                del self._buffer[:1000]  # only once written: nothing is lost or sent twice by a retry
        except Exception as e:
            self._enter_outage(e)
            return
        self._outage_since = None
        self._last_flush = time.monotonic()

    # ---- outages of a remote tracking server ----
    def _reachable(self) -> bool:
        """One quick probe (a local store is always reachable)."""
        try:
            check_reachable(self.tracking_uri, attempts=1)
            return True
        except ServiceUnavailableError:
            return False

    def _enter_outage(self, error: BaseException) -> None:
        """A failed write: an outage if the server no longer answers, else a real error (re-raised)."""
        if self._reachable():
            raise error
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            warnings.warn(f"MLflow tracking server {self.tracking_uri} is unreachable; training goes on and "
                          f"metrics are kept for up to {self.outage_tolerance_s:.0f} s", RuntimeWarning, stacklevel=3)
        self._outage_error = error
        self._next_probe = time.monotonic() + 1.0
        self._raise_if_outage_too_long()

    def _back_up(self) -> bool:
        """During an outage: probe (at most once a second, so training is not slowed) and report recovery."""
        if time.monotonic() < self._next_probe:
            self._raise_if_outage_too_long()
            return False
        self._next_probe = time.monotonic() + 1.0
        if self._reachable():
            return True
        self._raise_if_outage_too_long()
        return False

    def _raise_if_outage_too_long(self) -> None:
        down = time.monotonic() - (self._outage_since or time.monotonic())
        if down > self.outage_tolerance_s:
            raise TrackingUnavailableError(
                f"MLflow tracking server {self.tracking_uri} has been unreachable for {down:.0f} s during training "
                f"(tracking.outage_tolerance_s = {self.outage_tolerance_s:g}); training stopped, nothing was "
                "registered, the last checkpoint is kept. Bring the server back and resume "
                "(ppo train --resume, or re-run the flow).")

    def wait_until_reachable(self) -> None:
        """Before end-of-run writes: wait out an ongoing outage (within the tolerance) and flush."""
        self.flush()
        while self._outage_since is not None:
            if self._back_up():
                self.flush()
            else:
                time.sleep(0.5)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_result(self, trainer: Any, result: dict[str, Any]) -> None:
        """Final metrics, artifacts (config, history CSV, checkpoint) and the model (logged, not registered)."""
        t = time.perf_counter()
        self.wait_until_reachable()
        try:
            self._log_final(trainer, result)
            if self._outage_since is not None:  # the final metrics could not be written
                raise self._outage_error or RuntimeError("outage")
        except Exception as e:
            if isinstance(e, TrackingUnavailableError) or self._reachable():
                raise
            raise TrackingUnavailableError(
                f"MLflow tracking server {self.tracking_uri} went away while the run's final artifacts and model "
                f"were being logged ({type(e).__name__}); nothing was registered. Bring the server back and "
                "resume (ppo train --resume, or re-run the flow): the run is reopened and logged again.") from e
        self.final_logging_s = time.perf_counter() - t
        self.logging_s += self.final_logging_s

    def _log_final(self, trainer: Any, result: dict[str, Any]) -> None:
        fe = result["final_eval"]
        self.log_metrics({"eval/return_mean": fe["avg_reward"], "eval/return_std": fe["std_reward"],
                          "final/best_avg_reward": result.get("best_avg_reward"),
                          "final/episodes": result["episodes"], "final/wall_time_s": result["wall_time_s"],
                          "final/compile_s": result.get("compile_s")}, step=result["env_steps"])
        self.set_tags({"converged": result["converged"], "stop_reason": result["stop_reason"],
                       "best_seed": result["best_seed"]})
        with tempfile.TemporaryDirectory() as tmp:
            import yaml

            cfg_path = Path(tmp) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(trainer.config.to_dict(), sort_keys=False))
            self.client.log_artifact(self.run_id, str(cfg_path))
            hist = Path(tmp) / "history.csv"
            hist.write_text(history_csv(result["history"]))
            self.client.log_artifact(self.run_id, str(hist))
            summary = Path(tmp) / "result.json"
            summary.write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str))
            self.client.log_artifact(self.run_id, str(summary))
        ckpt = Path(result["checkpoint_dir"]) / "checkpoint.msgpack"
        if ckpt.is_file():
            self.client.log_artifact(self.run_id, str(ckpt), artifact_path="checkpoint")
        # the model is logged to the run, never registered here: only the pipeline's register task writes
        # model versions, each with the gate's figures (README, "Promotion rules")
        log_policy_model(self.run_id, trainer.agent, trainer.config, uri=self.tracking_uri)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if self._outage_since is not None and not self._reachable():
            raise TrackingUnavailableError(f"MLflow tracking server {self.tracking_uri} is unreachable")
        try:
            self.flush()
            if error:
                self.set_tags({"error": error[:4000]})
        finally:
            self.client.set_terminated(self.run_id, status=status)


def history_csv(history: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


# ---------------------------------------------------------------- model and registry
def log_policy_model(run_id: str, agent: Any, config: Config, uri: str | None = None) -> str:
    """Log the greedy policy as a pyfunc from code (no pickle) to the run in store ``uri`` (default: the
    configured store). Returns the model URI."""
    from ppo.serving import model_artifacts, model_signature, pip_requirements

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = model_artifacts(agent, config, Path(tmp))
        signature, example = model_signature(agent.observation_dim)
        c = client(uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("model_code.py")),
                artifacts=artifacts, signature=signature, input_example=example,
                pip_requirements=pip_requirements(), code_paths=[str(Path(__file__).parent)])
    c.set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri


def find_version(model_name: str, run_id: str, uri: str | None = None) -> str | None:
    """The version registered from ``run_id`` under ``model_name`` (the first, if several), or None."""
    existing = [v for v in client(uri).search_model_versions(f"name='{model_name}'") if v.run_id == run_id]
    return str(min(int(v.version) for v in existing)) if existing else None


def register_model(run_id: str, model_name: str, tags: dict[str, Any] | None = None, uri: str | None = None) -> str:
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
    version = mlflow.register_model(model_uri, model_name, tags={
        "run_id": run_id, "config_hash": run.data.tags.get("config_hash", ""),
        **{k: str(v) for k, v in (tags or {}).items()}})
    return str(version.version)


class UngatedVersionError(ValueError):
    """A model version without a passed gate cannot become champion."""


def set_champion(model_name: str, version: str | int, alias: str = CHAMPION) -> None:
    """Point ``alias`` at ``version``, which must carry the tag ``gate.passed=true`` that the pipeline's
    register task writes after a passed gate: a version registered by hand, or gated out, never serves."""
    c = client()
    tags = c.get_model_version(model_name, str(version)).tags
    if tags.get("gate.passed") != "true":
        raise UngatedVersionError(
            f"{model_name} version {version} has no passed gate (tag gate.passed={tags.get('gate.passed')!r}): "
            "only a version gated by the pipeline (train-ppo or promote-model) can become champion")
    c.set_registered_model_alias(model_name, alias, str(version))


def get_champion(model_name: str, alias: str = CHAMPION) -> str | None:
    info = champion_info(model_name, alias)
    return info["version"] if info else None


def load_model(uri: str) -> Any:
    """``mlflow.pyfunc.load_model`` (e.g. ``models:/ppo-cartpole@champion``)."""
    client()
    return mlflow.pyfunc.load_model(uri)


def version_params(model_name: str, version: str | int) -> tuple[Any, dict[str, Any]]:
    """The flax params and policy metadata of a registered model version (read from its artifacts)."""
    from flax import serialization

    mv = client().get_model_version(model_name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=tmp))
        params = serialization.msgpack_restore(next(local.rglob("params.msgpack")).read_bytes())
        meta = json.loads(next(local.rglob("policy.json")).read_text())
    return params, {**meta, "run_id": mv.run_id, "version": str(mv.version)}


def champion_info(model_name: str, alias: str = CHAMPION) -> dict[str, str] | None:
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
    """Download a version's run config (``config.yaml``) and final checkpoint into ``$PPO_HOME/registry/<run>``.

    Returns ``{"run_id", "config", "checkpoint_dir"}``; the config's checkpoint_dir points at the download.
    """
    import re

    import yaml

    from ppo.config import build_config

    mv = client().get_model_version(model_name, str(version))
    if not re.fullmatch(r"[0-9a-f]{32}", mv.run_id or ""):
        raise ValueError(f"{model_name} version {version}: unexpected run id {mv.run_id!r}")
    target = ppo_home() / "registry" / mv.run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        cfg_file = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="config.yaml",
                                                       dst_path=str(target))
        (target / "checkpoint").mkdir(exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="checkpoint/checkpoint.msgpack",
                                            dst_path=str(target / "checkpoint"))
    except mlflow.exceptions.MlflowException as e:
        raise FileNotFoundError(f"{model_name} version {version}: its run {mv.run_id} has no config.yaml or "
                                f"checkpoint artifact to re-gate from ({e})") from None
    data = yaml.safe_load(Path(cfg_file).read_text())
    # what was trained comes from the run; the gate and registry settings come from the caller (and runs
    # of older versions stored keys those sections no longer have)
    data = {k: v for k, v in data.items() if k not in ("gate", "registry")}
    data.setdefault("train", {})["checkpoint_dir"] = str(target / "checkpoint")
    return {"run_id": mv.run_id, "config": build_config(data).to_dict(), "checkpoint_dir": str(target / "checkpoint")}


def tag_version(model_name: str, version: str | int, tags: dict[str, Any]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(model_name, str(version), k, str(v).lower() if isinstance(v, bool) else str(v))


def log_report(run_id: str, directory: Path) -> None:
    client().log_artifacts(run_id, str(directory), artifact_path="report")


def run_url(run_id: str) -> str:
    """Where a person can look at the run: the MLflow UI page for an HTTP store, else the run's local
    artifact folder (``file://``; ``mlflow ui --backend-store-uri <store>`` shows the run itself)."""
    c = client()
    run = c.get_run(run_id)
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return run.info.artifact_uri
