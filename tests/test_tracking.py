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
from ppo.tracking import MLflowLogger
from tests.helpers import LOSS_KEYS, register_passed, small_config


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
        *LOSS_KEYS,
        "eval/return_mean",
        "eval/return_std",
        "perf/env_steps_per_s",
        "train/episode_return/seed_1",
    ):
        assert key in run.data.metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/avg_reward")]
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


# ---------------------------------------------------------------------- results a user can find (item 11)
def _points(run_id: str, exclude: tuple[str, ...] = ()) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run but ``exclude``: key -> sorted (step, value), duplicates kept."""
    client = tracking.client()
    keys = [k for k in client.get_run(run_id).data.metrics if k not in exclude]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_the_experiment_opens_on_the_model_training_pages(tracked_run):
    """MLflow 3's UI opens an experiment by its ``mlflow.experimentKind`` tag: without it a new experiment
    opened on the GenAI traces page, which a PPO run has nothing on."""
    _, result, _ = tracked_run
    client = tracking.client()
    experiment = client.get_experiment(client.get_run(result["run_id"]).info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_an_experiment_created_elsewhere_gets_its_kind_when_a_run_first_uses_it(tracked_run):
    """The sweep's parent run creates the experiment through the store alone: the first training run in it
    still sets the kind; a kind already chosen (in the UI) is left as it is."""
    client = tracking.client()
    fresh = tracking.get_or_create_experiment(client, "ppo-made-elsewhere")
    chosen = tracking.get_or_create_experiment(client, "ppo-kind-chosen")
    client.set_experiment_tag(chosen, "mlflow.experimentKind", "finetuning")
    MLflowLogger(experiment="ppo-made-elsewhere")
    MLflowLogger(experiment="ppo-kind-chosen")
    assert client.get_experiment(fresh).tags.get("mlflow.experimentKind") == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_runs_are_named_for_what_they_trained(tracked_run):
    """``<env slug>-s<seeds>-<config hash[:8]>`` instead of MLflow's random ``trusting-seal-901``; a name
    given to the logger (a sweep's ``trial-<i>``) is kept."""
    trainer, result, _ = tracked_run
    client = tracking.client()
    h = trainer.config.config_hash()[:8]
    assert client.get_run(result["run_id"]).info.run_name == f"cartpole-s0..1-{h}"
    for seeds, label in (([7], "s7"), ([1234, 1235, 1236], "s1234..1236"), ([3, 9, 4], "s3,9,4")):
        cfg = small_config(**{"tracking.enabled": True, "train.seeds": seeds})
        logger = MLflowLogger.from_config(cfg)
        run_id = logger.start(cfg)
        logger.end()
        assert client.get_run(run_id).info.run_name == f"cartpole-{label}-{cfg.config_hash()[:8]}"
    named = MLflowLogger.from_config(small_config(), run_name="trial-3")
    run_id = named.start(small_config())
    named.end()
    assert client.get_run(run_id).info.run_name == "trial-3"


def test_a_run_outside_prefect_has_no_flow_run_tags(tracked_run):
    _, result, _ = tracked_run
    tags = tracking.client().get_run(result["run_id"]).data.tags
    assert not [k for k in tags if k.startswith("prefect.")]


def test_the_train_task_links_its_mlflow_run_to_the_prefect_flow_run(tmp_path, monkeypatch):
    """Inside a flow run, the MLflow run carries the flow run's id, name and UI address (set when the run
    is created, so a run that fails or is still training links back too)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_UI_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks.train import train

    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    cfg = small_config(**{"tracking.enabled": True, "train.seeds": [11], "train.max_env_steps": 128 * 5})

    @flow(name="train-link-check")
    def train_once() -> dict:
        return train(cfg.to_dict(), cfg.config_hash(), {"challenger": "true"})

    with prefect_test_harness(server_startup_timeout=120):
        state = train_once(return_state=True)
        assert state.is_completed(), state
        flow_run_id = str(state.state_details.flow_run_id)
        with get_client(sync_client=True) as client:
            name = client.read_flow_run(flow_run_id).name
        ui = PREFECT_UI_URL.value()
    tags = tracking.client().get_run(state.result()["run_id"]).data.tags
    assert tags["prefect.flow_run_id"] == flow_run_id
    assert tags["prefect.flow_run_name"] == name
    assert ui.startswith("http") and tags["prefect.flow_run_url"] == f"{ui}/runs/flow-run/{flow_run_id}"
    assert tags["challenger"] == "true"  # the task's run_tags still reach the run


def test_curves_have_a_point_per_update_and_summary_figures_are_not_curves(tracked_run):
    """The chunk computes every update's losses and episode returns: the curves have a point per update
    (step = env steps), not one per chunk. Window means, counts and evaluations stay one point per chunk
    (the history's rows). The run's one-off figures are tags, not one-point metrics sorted before the
    curves in the UI."""
    trainer, result, _ = tracked_run
    client = tracking.client()
    run_id = result["run_id"]
    batch = trainer.config.ppo.batch_size
    per_update = [batch * (i + 1) for i in range(30)]  # 6 chunks of 5 updates, both seeds in every one
    for key in LOSS_KEYS:
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == per_update, key
    policy = {m.step: m.value for m in client.get_metric_history(run_id, "loss/policy")}
    for row in result["history"]:  # a chunk's row is the mean of its updates
        steps = range(row["env_steps"] - 4 * batch, row["env_steps"] + 1, batch)
        assert np.mean([policy[s] for s in steps]) == pytest.approx(row["loss/policy"], rel=1e-6)
    for key in ("train/episode_return", "train/episode_return/seed_0", "train/episode_return/seed_1"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) > 6 and set(steps) <= set(per_update) and len(set(steps)) == len(steps), key
    chunks = [row["env_steps"] for row in result["history"]]
    for key in ("train/avg_reward", "train/episodes", "train/env_steps", "perf/env_steps_per_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == chunks, key
    run = client.get_run(run_id)
    assert not [k for k in run.data.metrics if k.startswith("final/")]
    assert float(run.data.tags["final/wall_time_s"]) == result["wall_time_s"]
    assert int(run.data.tags["final/episodes"]) == result["episodes"]
    assert float(run.data.tags["final/best_avg_reward"]) == result["best_avg_reward"]


def test_per_update_points_go_in_batches_of_at_most_1000(tracked_run, monkeypatch):
    """One chunk of many updates is written with ``log_batch`` in batches MLflow accepts (1000 metrics)."""
    cfg = small_config(**{"tracking.enabled": True})
    logger = MLflowLogger.from_config(cfg, flush_every_s=1e9, flush_every_metrics=10**6)
    run_id = logger.start(cfg)
    sizes: list[int] = []
    log_batch = logger.client.log_batch

    def counted(run_id, metrics=(), params=(), tags=()):
        sizes.append(len(metrics))
        return log_batch(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(logger.client, "log_batch", counted)
    n = 700
    row = {
        "chunk": 1,
        "update": n,
        "env_steps": 128 * n,
        "episodes": 3,
        "avg_reward": 10.0,
        "loss/policy": 0.5,
    }
    updates = {"env_steps": [128 * (i + 1) for i in range(n)], "loss/policy": [float(i) for i in range(n)]}
    updates["grad_norm"] = [1.0] * n
    logger.log_chunk(row, updates)
    logger.flush()
    logger.end()
    assert sizes == [1000, 403], sizes  # 1400 per-update points, the row's env steps, episodes, window
    history = tracking.client().get_metric_history(run_id, "loss/policy")
    assert sorted((m.step, m.value) for m in history) == [(128 * (i + 1), float(i)) for i in range(n)]


class _Killed(MLflowLogger):
    """What ``kill -9`` leaves: the buffered points never reach the store."""

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        self._buffer.clear()
        super().end(status, error)


def test_a_resumed_run_has_the_per_update_curves_of_an_uninterrupted_run(ppo_home):
    """The per-update points of the chunks before a kill are in the checkpoint and written back on resume:
    the same names, steps and values as an uninterrupted run, none twice (chunk 5 ran before the kill and
    again after the resume from chunk 4)."""
    cfg = small_config(
        **{
            "train.checkpoint_dir": "ck",
            "train.checkpoint_every": 2,
            "train.seeds": [0],
            "tracking.enabled": True,
        }
    )

    def stop_at_chunk_5(info):
        if info["step_metrics"]["chunk"] == 5:
            raise KeyboardInterrupt

    killed = _Killed.from_config(cfg, flush_every_s=1e9, flush_every_metrics=10**6)
    with pytest.raises(KeyboardInterrupt):
        PPOTrainer(config=cfg, logger=killed).train(callback=stop_at_chunk_5)
    assert _points(killed.run_id) == {}
    resumed = PPOTrainer(config=cfg, enable_mlflow=True).train(resume=True)
    assert resumed["run_id"] == killed.run_id and resumed["resumed_from_chunk"] == 4
    ref_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": "ref"})})
    reference = PPOTrainer(config=ref_cfg, enable_mlflow=True).train()
    got = _points(resumed["run_id"], exclude=("perf/env_steps_per_s",))  # timings differ
    want = _points(reference["run_id"], exclude=("perf/env_steps_per_s",))
    assert got == want
    assert len(got["loss/policy"]) == 30 and len(got["train/avg_reward"]) == 6


def test_a_lost_run_is_logged_again_with_its_per_update_curves(ppo_home):
    """A finished run whose MLflow run was deleted is logged again from the checkpoint: per-update curves
    included."""
    cfg = small_config(**{"tracking.enabled": True, "train.seeds": [0]})
    first = PPOTrainer(config=cfg, enable_mlflow=True).train()
    before = _points(first["run_id"])
    tracking.client().delete_run(first["run_id"])
    again = PPOTrainer(config=cfg, enable_mlflow=True).train(resume=True)
    assert again["run_id"] != first["run_id"]
    after = _points(again["run_id"])
    assert len(after["loss/policy"]) == 30 and after["loss/policy"] == before["loss/policy"]
    assert after["train/episode_return"] == before["train/episode_return"]
