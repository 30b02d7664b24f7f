"""Lost state under the pipeline (issue 16, item 11): a cached ``train`` result is used only while what it
points to exists and matches (its checkpoint loads, its MLflow run is in the store); otherwise the task runs
again. ``ppo evaluate -c`` finds the checkpoint the pipeline trained (one rule names checkpoint folders).

The ``train`` task runs in a one-task flow under Prefect's test harness (a real Prefect API and result
storage, a real MLflow sqlite store in ``$PPO_HOME``); the gate, report and registry are not needed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from flows.cli import app
from ppo import tracking
from tasks import train
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


@flow(name="train-only")
def train_only(config: dict, config_hash: str) -> dict:
    return train(config, config_hash)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    cfg = small_config(**{"tracking.enabled": True, "train.seeds": [0]})
    path = home / "small.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPO_HOME", str(home))
        with prefect_test_harness(server_startup_timeout=120):
            yield cfg, path, home


def _run(cfg) -> tuple[dict, str]:
    """(the train task's result, its final state's name)."""
    state = train_only(cfg.to_dict(), cfg.config_hash(), return_state=True)
    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    return state.result(), task_run.state.name


def test_evaluate_finds_what_the_pipeline_trained(harness):
    cfg, path, _ = harness
    trained, _ = _run(cfg)
    out = CliRunner().invoke(app, ["evaluate", "--config", str(path), "--episodes", "2"])
    assert out.exit_code == 0, out.output
    assert "avg_reward" in json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(trained["checkpoint_dir"]).parent.name == "checkpoints"


def test_a_deleted_checkpoint_makes_train_run_again(harness):
    cfg, _, _ = harness
    first, _ = _run(cfg)
    again, state = _run(cfg)
    assert state == "Cached" and again == first
    shutil.rmtree(first["checkpoint_dir"])
    retrained, state = _run(cfg)
    assert state == "Completed", "a cached result pointing at a deleted checkpoint was used"
    assert (Path(retrained["checkpoint_dir"]) / "checkpoint.msgpack").is_file()
    assert retrained["run_id"] != first["run_id"]  # trained afresh: a new run
    assert _run(cfg)[1] == "Cached"  # and that result is cached in turn


def test_a_lost_mlflow_run_makes_train_log_again(harness):
    cfg, _, _ = harness
    first, _ = _run(cfg)
    tracking.client().delete_run(first["run_id"])  # what an emptied or replaced mlflow.db also does
    relogged, state = _run(cfg)
    assert state == "Completed", "a cached result pointing at a lost MLflow run was used"
    assert relogged["run_id"] != first["run_id"]
    run = tracking.client().get_run(relogged["run_id"])
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    # the new run carries the whole history from the checkpoint, and the model
    history = tracking.client().get_metric_history(relogged["run_id"], "train/avg_reward")
    assert len(history) == 6
    assert [relogged[k] for k in ("env_steps", "episodes")] == [first[k] for k in ("env_steps", "episodes")]
    assert _run(cfg)[1] == "Cached"


def test_a_broken_champion_is_reported_and_a_good_candidate_replaces_it(harness, caplog):
    """The champion's model artifacts are deleted: the next candidate's gate used to fail with
    ``RuntimeError: coroutine raised StopIteration``; now a warning names the version and what is missing,
    and a passing candidate becomes the champion."""
    import logging

    from flows.train_ppo import train_ppo

    _, path, home = harness
    gate = {"gate.min_return": 0.0, "gate.episodes": 10, "gate.min_seeds": 2}
    first = train_ppo(config_path=str(path), overrides={**gate, "train.seeds": [3, 4]})
    assert first["outcome"] == "promoted", first
    broken = first["model_version"]
    source = tracking.client().get_model_version("ppo-cartpole", broken).source  # models:/m-<id>
    model_dir = next(home.glob(f"mlartifacts/*/models/{source.removeprefix('models:/')}"))
    shutil.rmtree(model_dir)

    with caplog.at_level(logging.WARNING):
        second = train_ppo(config_path=str(path), overrides={**gate, "train.seeds": [5, 6]})
    assert second["outcome"] == "promoted" and second["champion"] == second["model_version"] != broken
    warned = [r.getMessage() for r in caplog.records if "the champion is broken" in r.getMessage()]
    assert warned and f"version {broken}" in warned[0] and "missing" in warned[0], warned


def test_an_emptied_store_gets_the_finished_run_logged_again(tmp_path, monkeypatch):
    """The literal case: ``mlflow.db`` emptied, then ``ppo train --resume`` in a new process (which sees an
    empty store): the finished checkpoint is logged to a new run, whole, without training again; the old
    run id is not handed back. The store is read back with sqlite3 (this process's MLflow connections
    still point at the emptied file)."""
    import os
    import sqlite3
    import subprocess
    import sys

    from ppo import PPOTrainer

    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    cfg = small_config(**{"train.seeds": [0], "train.checkpoint_dir": "ck", "tracking.enabled": True})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    first = PPOTrainer(config=cfg, enable_mlflow=True).train()
    (home / "mlflow.db").write_bytes(b"")  # emptied

    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "ppo.cli", "train", "-c", str(path), "--resume", "--json", str(out)]
    rc = subprocess.run(cmd, env={**os.environ, "PPO_HOME": str(home)}, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    again = json.loads(out.read_text())
    assert again["run_id"] != first["run_id"] and again["resumed_from_chunk"] == 6  # not trained again
    with sqlite3.connect(home / "mlflow.db") as db:
        (status,) = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (again["run_id"],)).fetchone()
        points = db.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'train/avg_reward'", (again["run_id"],)
        ).fetchone()[0]
        model = db.execute(
            "SELECT COUNT(*) FROM tags WHERE run_uuid = ? AND key = 'model_uri'", (again["run_id"],)
        ).fetchone()[0]
    assert (status, points, model) == ("FINISHED", 6, 1)
