"""The MLflow server goes away during training: the run rides out a short outage without losing a
metric, and a long one fails with one readable error, registering and promoting nothing."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from ppo import PPOTrainer, tracking
from ppo.tracking import MLflowLogger
from ppo.tracking.probe import ServiceUnavailableError
from tests.helpers import free_port, small_config, start_mlflow_server

pytestmark = pytest.mark.reliability


def _config(**extra):
    # ~12 chunks; the run logs its model whether it converged or not, so "no model" is a real claim
    return small_config(**{"tracking.enabled": True, "train.max_env_steps": 128 * 5 * 12, **extra})


def _server(tmp_path, monkeypatch):
    """A real mlflow server (restartable on the same port and store) that the run talks to."""
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    store, port = tmp_path / "store", free_port()
    store.mkdir()
    server, url = start_mlflow_server(store, port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    return server, url, store, port


def test_short_outage_is_ridden_out_and_nothing_is_lost(tmp_path, monkeypatch):
    server, url, store, port = _server(tmp_path, monkeypatch)
    cfg = _config(**{"tracking.outage_tolerance_s": 120})
    logger = MLflowLogger(url, cfg.experiment_name, flush_every_s=0.0, outage_tolerance_s=120)
    seen = {}

    def outage(info):
        nonlocal server
        chunk = len(seen) + 1
        seen[chunk] = info["env_steps"]
        if chunk == 3:
            server.stop()  # chunks 4..6 are trained and logged while the server is down
        if chunk == 6:
            server, _ = start_mlflow_server(store, port)

    try:
        with pytest.warns(RuntimeWarning, match="unreachable; training goes on"):
            result = PPOTrainer(config=cfg, logger=logger).train(callback=outage)
        client = MlflowClient(url)
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/env_steps")]
        assert sorted(steps) == [row["env_steps"] for row in result["history"]]  # every chunk, once
        model = tracking.load_model(run.data.tags["model_uri"])  # the logged model's artifacts are all there
        assert model.metadata.signature is not None
    finally:
        server.stop()


def test_long_outage_fails_readably_and_registers_nothing(tmp_path, monkeypatch):
    server, url, store, port = _server(tmp_path, monkeypatch)
    cfg = _config(**{"tracking.outage_tolerance_s": 3})
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    stopped = []

    def outage(info):
        if not stopped:
            server.stop()
            stopped.append(time.monotonic())

    try:
        with pytest.raises(ServiceUnavailableError) as e, pytest.warns(RuntimeWarning):
            trainer.train(callback=outage)
        message = str(e.value)
        assert f"MLflow tracking server {url} has been unreachable for" in message
        assert "nothing was registered" in message and "\n" not in message
        assert time.monotonic() - stopped[0] < 30  # bounded: the tolerance plus MLflow's own short retries
        assert (trainer.checkpoint_dir / "checkpoint.msgpack").is_file()  # the work is kept for a resume
        server, _ = start_mlflow_server(store, port)
        client = MlflowClient(url)
        assert client.search_model_versions("name='ppo-cartpole'") == []
        assert tracking.get_champion("ppo-cartpole") is None
        assert client.get_run(trainer.logger.run_id).info.status != "FINISHED"
    finally:
        server.stop()
