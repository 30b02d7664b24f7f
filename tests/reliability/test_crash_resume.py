"""Crash and resume: `kill -9` at a random point, then `--resume`, ends with the parameters of an
uninterrupted run; a torn checkpoint is never loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml

from ppo import PPOTrainer
from ppo.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


def _leaves(trainer):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))]


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    # long enough (~40 chunks) that the kill lands mid-run; same config file for the killed and resumed run
    cfg = small_config(
        **{
            "train.checkpoint_dir": "ck",
            "train.updates_per_chunk": 25,
            "train.max_env_steps": 128 * 25 * 40,
            "train.eval_frequency": 10**6,
        }
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PPO_HOME": str(home)}
    cmd = [sys.executable, "-m", "ppo.cli", "train", "-c", str(path), "--no-mlflow"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = home / "ck" / CHECKPOINT_NAME
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(np.random.default_rng().uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(home / "ck", PPOTrainer(config=cfg).init_state())[1]
    assert not killed_at.get("finished") and 1 <= killed_at["chunk"] < 40
    rc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    resumed = PPOTrainer(config=cfg)
    resumed.restore()
    uninterrupted = PPOTrainer(
        config=cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_dir": "ref"})})
    )
    uninterrupted.train()
    for a, b in zip(_leaves(uninterrupted), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_torn_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    cfg = small_config(**{"train.checkpoint_dir": str(tmp_path)})
    trainer = PPOTrainer(config=cfg)
    template = trainer.init_state()
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"\x82\xa6sha256")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path, template)
    with pytest.raises(CheckpointError):
        trainer.train(resume=True)
