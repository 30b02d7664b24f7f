"""MLflow tracking on the real sqlite store: params, metrics, artifacts, model, registry, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ppo import PPOTrainer, tracking
from tests.helpers import register_passed, small_config


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # this module's $PPO_HOME, unset again after it
        mp.setenv("PPO_HOME", str(home))
        cfg = small_config(**{"tracking.enabled": True})
        trainer = PPOTrainer(config=cfg, enable_mlflow=True)
        result = trainer.train()
        yield trainer, result, home


def test_run_has_params_metrics_tags_and_artifacts(tracked_run):
    trainer, result, home = tracked_run
    assert (home / "mlflow.db").is_file()
    client = MlflowClient(tracking.default_tracking_uri())
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ppo-cartpole"
    params = run.data.params
    assert set(trainer.config.flat()) <= set(params)
    assert params["ppo.learning_rate"] == "0.001" and params["train.seeds"] == "[0, 1]"
    for key in (
        "train/episode_return",
        "train/episodes",
        "train/env_steps",
        "loss/policy",
        "loss/value",
        "loss/entropy",
        "loss/approx_kl",
        "loss/clip_fraction",
        "grad_norm",
        "eval/return_mean",
        "eval/return_std",
        "perf/env_steps_per_s",
        "train/episode_return/seed_1",
    ):
        assert key in run.data.metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/policy")]
    assert steps == [640 * (i + 1) for i in range(6)]
    tags = run.data.tags
    for key in ("git_commit", "version.jax", "version.flax", "version.optax", "device", "config_hash"):
        assert tags.get(key), key
    assert tags["config_hash"] == trainer.config.config_hash()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "result.json", "checkpoint"} <= names
    hist = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="history.csv")
    assert len(open(hist).read().strip().splitlines()) == 7


def test_model_is_code_not_pickle_and_loads_in_fresh_process(tracked_run, tmp_path):
    trainer, result, home = tracked_run
    version = register_passed(result["run_id"])
    assert tracking.register_model(result["run_id"], "ppo-cartpole") == version  # idempotent
    tracking.set_champion("ppo-cartpole", version)
    assert tracking.get_champion("ppo-cartpole") == version
    mv = MlflowClient().get_model_version("ppo-cartpole", version)
    assert mv.tags["run_id"] == result["run_id"] and mv.tags["config_hash"] == trainer.config.config_hash()
    local = mlflow.artifacts.download_artifacts(mv.source, dst_path=str(tmp_path / "model"))
    files = [os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert any(f.endswith("params.msgpack") for f in files)
    assert "python_model.pkl" not in open(os.path.join(local, "MLmodel")).read()
    obs = np.random.default_rng(3).normal(size=(64, 4)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    code = (
        "import mlflow, numpy as np, json, sys;"
        f"m = mlflow.pyfunc.load_model('models:/ppo-cartpole@champion');"
        f"print(json.dumps(m.predict(np.load(r'{tmp_path / 'obs.npy'}')).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking.default_tracking_uri()},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served == trainer.agent.predict(obs, deterministic=True).tolist()


def test_crashed_run_is_marked_failed(tracked_run):
    cfg = small_config(**{"tracking.enabled": True})
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)

    def boom(info):
        raise RuntimeError("callback exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        trainer.train(callback=boom)
    run = MlflowClient().get_run(trainer.logger.run_id)
    assert run.info.status == "FAILED" and "exploded" in run.data.tags["error"]
    assert not [
        v
        for v in MlflowClient().search_model_versions("name='ppo-cartpole'")
        if v.run_id == trainer.logger.run_id
    ]


def test_training_logs_the_model_but_never_registers_it(tracked_run):
    before = {v.run_id for v in MlflowClient().search_model_versions("name='ppo-cartpole'")}
    trainer = PPOTrainer(config=small_config(**{"tracking.enabled": True}), enable_mlflow=True)
    result = trainer.train()
    assert "model_version" not in result
    assert MlflowClient().get_run(result["run_id"]).data.tags.get("model_uri")
    after = {v.run_id for v in MlflowClient().search_model_versions("name='ppo-cartpole'")}
    assert after == before  # only the pipeline's register task writes versions
