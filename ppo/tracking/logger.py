"""The run logger: one training run written to MLflow, resilient to an outage of a remote server.

:class:`MLflowLogger` logs params (dotted config names), metrics with :data:`METRIC_KEYS`' names at
step = env steps, batched through ``log_batch``; per-seed curves as metric suffixes ``.../seed_<n>``;
artifacts (config YAML, history CSV from :func:`history_csv`, final checkpoint) and the policy model
(models-from-code, no pickle; logged, never registered).

What a user finds in the MLflow UI: the experiment opens on the model-training pages
(:data:`EXPERIMENT_KIND`), a run is named for what it trained (:func:`run_name`), the losses and episode
returns have a point per update (the chunk's per-update points, :meth:`MLflowLogger.log_chunk`), and the
run's one-off figures (``final/*``) are tags, not one-point charts sorted before the curves.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag

from ppo import atomic
from ppo.config import Config
from ppo.tracking.probe import ServiceUnavailableError
from ppo.tracking.store import (
    check_reachable,
    config_store_uri,
    connect,
    get_or_create_experiment,
    run_exists,
)

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

#: MLflow 3's UI picks an experiment's pages by this tag; without it a new experiment opened on the GenAI
#: traces page. ``custom_model_development`` is the installed UI's kind for model training (its runs,
#: their charts and models).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def run_name(config: Config) -> str:
    """``<env slug>-s<seeds>-<config hash[:8]>``, e.g. ``cartpole-s0..4-1a2b3c4d``: what the run trained
    (a challenger's fresh seeds included), readable in the runs table instead of MLflow's random names.
    Seeds read ``s7`` (one), ``s0..4`` (consecutive) or ``s3,9,4`` (any others)."""
    seeds = [int(s) for s in config.train.seeds]
    if len(seeds) == 1:
        label = f"s{seeds[0]}"
    elif seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        label = f"s{seeds[0]}..{seeds[-1]}"
    else:
        label = "s" + ",".join(str(s) for s in seeds)
    return f"{config.env_slug}-{label}-{config.config_hash()[:8]}"


def _git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or "unknown"
        )
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
    """Logs one training run to MLflow (the reference's ``MLflowLogger``); a :class:`ppo.trainer.RunLogger`.

    Metrics are buffered and written with ``log_batch`` every ``flush_every_s`` seconds or
    ``flush_every_metrics`` metrics, and at the end, so tracking costs little next to training.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "ppo-cartpole",
        run_name: str | None = None,
        flush_every_s: float = 5.0,
        flush_every_metrics: int = 900,
        outage_tolerance_s: float = 60.0,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.client = connect(tracking_uri)
        self.tracking_uri = self.client._tracking_client.tracking_uri
        self.experiment = experiment
        self.experiment_id = get_or_create_experiment(self.client, experiment)
        self._set_experiment_kind()
        self.run_name = run_name  # None: named by start() from the config (:func:`run_name`)
        self.parent_run_id = parent_run_id  # nests this run under another (a sweep's trials)
        # the caller's tags (a challenger's, the Prefect flow run's): on the run from its creation, so a
        # run still training, or one that failed, carries them too
        self.tags = dict(tags or {})
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
        self._logged: dict[str, set[int]] = {}  # metric -> steps the (resumed) run already has

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> MLflowLogger:
        return cls(
            config_store_uri(config),
            config.experiment_name,
            outage_tolerance_s=config.tracking.outage_tolerance_s,
            **kwargs,
        )

    def _set_experiment_kind(self) -> None:
        """Tag the experiment as model training when it has no kind yet: whoever created it (this logger,
        the sweep's parent run, an older version of this project), the first run that uses it sets it; a
        kind chosen since (in the UI) is kept."""
        experiment = self.client.get_experiment(self.experiment_id)
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

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
                if self.run_id is not None and self.tags:  # e.g. the flow run that resumes it now
                    self.set_tags(self.tags)
        if self.run_id is None:
            import jax

            tags = {
                "config_hash": config.config_hash(),
                "git_commit": _git_commit(),
                "env_id": config.env.id,
                "seeds": json.dumps(list(config.train.seeds)),
                "device": jax.devices()[0].device_kind,
                "platform": jax.devices()[0].platform,
                "device_count": str(jax.device_count()),
                "host": platform.node(),
                **_versions(),
                **self.tags,
            }
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            if self.run_name is None:
                self.run_name = run_name(config)
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
            self.run_id = run.info.run_id
            params = [
                Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
                for k, v in config.flat().items()
            ]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        if marker is not None:
            atomic.write_text(marker, json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri}))
        self.start_s = time.perf_counter() - t
        self.logging_s += self.start_s
        return self.run_id

    def has_run(self, run_id: str | None) -> bool:
        """Whether ``run_id`` is a live run of this store (not deleted, not lost with an emptied store)."""
        return run_exists(self.client, run_id)

    @property
    def _open_run(self) -> str:
        """The run being logged to: the logging methods are called between :meth:`start` and :meth:`end`."""
        assert self.run_id is not None, "MLflowLogger: start() a run before logging to it"
        return self.run_id

    def log_history(
        self, rows: list[dict[str, Any]], updates: dict[str, dict[str, list[Any]]] | None = None
    ) -> None:
        """Write the rows of a resumed run's checkpoint, and their chunks' per-update points (``updates``:
        chunk number as a string -> the points :meth:`log_chunk` takes), that the run does not have yet.

        Why: the metrics of the chunks before a kill were buffered (or flushed) by the killed process;
        whatever never reached the store would leave the curves starting where the run resumed. The points
        the run already has (same metric, same step) are not written twice, here or by :meth:`log_chunk`
        when the chunks after the last checkpoint run again. A row without per-update points (a checkpoint
        written before they were kept) is written as it is, one point per chunk.
        """
        t = time.perf_counter()
        self._logged = {}
        have = set(self.client.get_run(self._open_run).data.metrics)
        ts = int(time.time() * 1000)
        updates = updates or {}
        wanted = [m for row in rows for m in _chunk_metrics(row, updates.get(str(row.get("chunk"))), ts)]
        for key in {m.key for m in wanted} & have:
            self._logged[key] = {m.step for m in self.client.get_metric_history(self._open_run, key)}
        self._buffer.extend(m for m in wanted if m.step not in self._logged.get(m.key, ()))
        self.flush()
        self.logging_s += time.perf_counter() - t

    def log_row(self, row: dict[str, Any]) -> None:
        """Queue one history row's metrics (step = env steps): :meth:`log_chunk` without per-update
        points."""
        self.log_chunk(row, None)

    def log_chunk(self, row: dict[str, Any], updates: dict[str, list[Any]] | None) -> None:
        """Queue one chunk's metrics: its history row's, and every update's (``updates``: ``env_steps``
        and, per history key, one value or None per update, e.g. ``{"env_steps": [128, 256],
        "loss/policy": [0.1, 0.2]}``). A key with per-update points is logged at every update instead of
        once per chunk: the curves a user reads have the resolution the training had (the row's value
        would be a second point at the chunk's last update). After a resume, points the run already has
        are skipped (a chunk run again after the last checkpoint). The queue is written with ``log_batch``
        in batches of at most 1000 metrics (MLflow's limit) by :meth:`flush`.
        """
        t = time.perf_counter()
        metrics = _chunk_metrics(row, updates, int(time.time() * 1000))
        if self._logged:
            metrics = [m for m in metrics if m.step not in self._logged.get(m.key, ())]
        self._buffer.extend(metrics)
        if (
            len(self._buffer) >= self.flush_every_metrics
            or time.monotonic() - self._last_flush >= self.flush_every_s
        ):
            self.flush()
        self.logging_s += time.perf_counter() - t

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        """Write ``metrics`` at ``step`` now; None values (a figure the run does not have) are skipped."""
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None)
        self.flush()

    def flush(self) -> None:
        """Write the buffered metrics. While the server is unreachable, keep them (training goes on) and
        retry on later flushes; after ``outage_tolerance_s`` raise one :class:`ServiceUnavailableError`."""
        if self._outage_since is not None and not self._back_up():
            return
        try:
            while self._buffer:
                self.client.log_batch(self._open_run, metrics=self._buffer[:1000])
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
            warnings.warn(
                f"MLflow tracking server {self.tracking_uri} is unreachable; training goes on and "
                f"metrics are kept for up to {self.outage_tolerance_s:.0f} s",
                RuntimeWarning,
                stacklevel=3,
            )
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
            raise ServiceUnavailableError(
                f"MLflow tracking server {self.tracking_uri} has been unreachable for {down:.0f} s during "
                f"training (tracking.outage_tolerance_s = {self.outage_tolerance_s:g}); training stopped, "
                "nothing was registered, the last checkpoint is kept. Bring the server back and resume "
                "(ppo train --resume, or re-run the flow)."
            )

    def wait_until_reachable(self) -> None:
        """Before end-of-run writes: wait out an ongoing outage (within the tolerance) and flush."""
        self.flush()
        while self._outage_since is not None:
            if self._back_up():
                self.flush()
            else:
                time.sleep(0.5)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self._open_run, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_result(self, result: dict[str, Any], agent: Any, config: Config) -> None:
        """Final metrics, artifacts (``config``, history CSV, checkpoint) and ``agent`` as the run's model
        (logged, not registered)."""
        t = time.perf_counter()
        self.wait_until_reachable()
        try:
            self._log_final(result, agent, config)
            if self._outage_since is not None:  # the final metrics could not be written
                raise self._outage_error or RuntimeError("outage")
        except Exception as e:
            if isinstance(e, ServiceUnavailableError) or self._reachable():
                raise
            raise ServiceUnavailableError(
                f"MLflow tracking server {self.tracking_uri} went away while the run's final artifacts and "
                f"model were being logged ({type(e).__name__}); nothing was registered. Bring the server "
                "back and resume (ppo train --resume, or re-run the flow): the run is reopened and logged "
                "again."
            ) from e
        self.final_logging_s = time.perf_counter() - t
        self.logging_s += self.final_logging_s

    def _log_final(self, result: dict[str, Any], agent: Any, config: Config) -> None:
        """The final evaluation (the last point of the ``eval/*`` curves), the run's one-off figures as tags
        (``final/*``: one value per run, not curves; as one-point metrics the UI charted them as bars in a
        section sorted before the curves), the artifacts and the model."""
        fe = result["final_eval"]
        self.log_metrics(
            {"eval/return_mean": fe["avg_reward"], "eval/return_std": fe["std_reward"]},
            step=result["env_steps"],
        )
        final = {
            "final/best_avg_reward": result.get("best_avg_reward"),
            "final/episodes": result["episodes"],
            "final/wall_time_s": result["wall_time_s"],
            "final/compile_s": result.get("compile_s"),
        }
        self.set_tags(
            {
                "converged": result["converged"],
                "stop_reason": result["stop_reason"],
                "best_seed": result["best_seed"],
                **{k: v for k, v in final.items() if v is not None},
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            import yaml

            cfg_path = Path(tmp) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            self.client.log_artifact(self.run_id, str(cfg_path))
            hist = Path(tmp) / "history.csv"
            hist.write_text(history_csv(result["history"]))
            self.client.log_artifact(self.run_id, str(hist))
            summary = Path(tmp) / "result.json"
            summary.write_text(
                json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str)
            )
            self.client.log_artifact(self.run_id, str(summary))
        ckpt = Path(result["checkpoint_dir"]) / "checkpoint.msgpack"
        if ckpt.is_file():
            self.client.log_artifact(self.run_id, str(ckpt), artifact_path="checkpoint")
        # the model is logged to the run, never registered here: only the pipeline's register task writes
        # model versions, each with the gate's figures (README, "Promotion rules")
        from ppo.tracking.model import log_policy_model

        log_policy_model(self._open_run, agent, config, uri=self.tracking_uri)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if self._outage_since is not None and not self._reachable():
            raise ServiceUnavailableError(f"MLflow tracking server {self.tracking_uri} is unreachable")
        try:
            self.flush()
            if error:
                self.set_tags({"error": error[:4000]})
        finally:
            self.client.set_terminated(self.run_id, status=status)


def _metric_name(key: str) -> str | None:
    """The MLflow name of a history key (:data:`METRIC_KEYS`, per-seed ``.../seed_<n>``); None: not a
    metric."""
    name = METRIC_KEYS.get(key)
    if name is None and "/seed_" in key:
        base, seed = key.split("/seed_")
        name = f"{METRIC_KEYS.get(base, base)}/seed_{seed}"
    return name


def _row_metrics(row: dict[str, Any], ts: int, skip: frozenset[str] = frozenset()) -> list[Metric]:
    """One history row as MLflow metrics at step = env steps (but the keys in ``skip``): the same points
    whether logged live or written back on resume."""
    step = int(row["env_steps"])
    out = []
    for key, value in row.items():
        if value is None or key in skip or key in ("chunk", "update", "wall_s", "converged_seeds"):
            continue
        name = _metric_name(key)
        if name is not None:
            out.append(Metric(name, float(value), ts, step))
    return out


def _chunk_metrics(row: dict[str, Any], updates: dict[str, list[Any]] | None, ts: int) -> list[Metric]:
    """A chunk's metrics: its row's, but for the keys that have per-update points, which are logged at
    each update's env steps instead (see :meth:`MLflowLogger.log_chunk`)."""
    if not updates:
        return _row_metrics(row, ts)
    steps = [int(s) for s in updates["env_steps"]]
    per_update = frozenset(updates) - {"env_steps"}
    out = _row_metrics(row, ts, skip=per_update)
    for key in sorted(per_update):
        name = _metric_name(key)
        if name is not None:
            out.extend(
                Metric(name, float(v), ts, s)
                for s, v in zip(steps, updates[key], strict=True)
                if v is not None
            )
    return out


def history_csv(history: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()
