"""A resumed run's MLflow curves are whole (issue 16, item 13): the history of the chunks before a kill is in
the checkpoint and is written back to the run on resume, at the same metric names and steps as an
uninterrupted run, and no point is written twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from ppo import PPOTrainer, tracking
from ppo.checkpoint import CHECKPOINT_NAME
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


def _points(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the run: key -> sorted (step, value), duplicates kept."""
    client = tracking.client()
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def _steps(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[int]]:
    return {k: [s for s, _ in v] for k, v in points.items()}


def _with_dir(cfg, folder: str):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": folder})})


def test_kill_9_then_resume_has_the_curves_of_an_uninterrupted_run(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    cfg = small_config(
        **{
            "train.checkpoint_dir": "ck",
            "train.updates_per_chunk": 10,
            "train.max_env_steps": 128 * 10 * 40,
            "train.eval_frequency": 10**6,
            "train.seeds": [0],
            "tracking.enabled": True,
        }
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PPO_HOME": str(home)}
    cmd = [sys.executable, "-m", "ppo.cli", "train", "-c", str(path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = home / "ck" / CHECKPOINT_NAME
    deadline = time.time() + 180
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # a few chunks: their rows are in the checkpoint, their metrics still in the buffer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    rc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-2000:]
    resumed = PPOTrainer(config=cfg).restore()
    run_id = tracking.client().get_run(_marker_run(home / "ck")).info.run_id

    reference = PPOTrainer(config=_with_dir(cfg, "ref"), enable_mlflow=True).train()
    got, want = _points(run_id), _points(reference["run_id"])
    assert _steps(got) == _steps(want)  # same names, same steps, nothing twice, nothing missing
    assert got["train/avg_reward"] == want["train/avg_reward"]  # and the same values
    assert len(got["train/avg_reward"]) == len(resumed["history"]) == 40


def _marker_run(folder) -> str:
    import json

    return json.loads((folder / "mlflow_run.json").read_text())["run_id"]


def test_chunks_run_again_after_the_last_checkpoint_are_not_logged_twice(ppo_home):
    """Chunk 3 reached MLflow (the interrupted run flushed it) but the last checkpoint is chunk 2: the
    resumed run trains chunk 3 again and must not add its points a second time."""
    cfg = small_config(**{"train.checkpoint_dir": "ck", "train.checkpoint_every": 2, "train.seeds": [0]})

    def stop_at_chunk_3(info):
        if info["step_metrics"]["chunk"] == 3:
            raise KeyboardInterrupt

    first = PPOTrainer(config=cfg, enable_mlflow=True)
    with pytest.raises(KeyboardInterrupt):
        first.train(callback=stop_at_chunk_3)
    run_id = first.logger.run_id
    assert len(_points(run_id)["train/avg_reward"]) == 3
    result = PPOTrainer(config=cfg, enable_mlflow=True).train(resume=True)
    assert result["run_id"] == run_id and result["resumed_from_chunk"] == 2
    counts = Counter(s for s, _ in _points(run_id)["train/avg_reward"])
    assert len(counts) == 6 and set(counts.values()) == {1}, counts
