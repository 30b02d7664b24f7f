"""A NaN loss aborts training with the update number, fails the MLflow run, registers nothing."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ppo import NonFiniteLossError, PPOTrainer, tracking
from ppo.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


def _diverged_checkpoint(cfg):
    first = PPOTrainer(config=cfg)
    first.train(callback=lambda info: False)  # one chunk (5 updates), checkpoint saved
    state, meta = load_checkpoint(first.checkpoint_dir, first.init_state())
    poisoned = state.replace(params=jax.tree.map(lambda x: np.full_like(x, np.nan), state.params))
    save_checkpoint(first.checkpoint_dir, poisoned, meta)


def test_nan_loss_aborts_fails_run_and_registers_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    cfg = small_config(**{"train.checkpoint_dir": "ck", "tracking.enabled": True})
    _diverged_checkpoint(cfg)
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at update 6 "):
        trainer.train(resume=True)
    run = MlflowClient(tracking.default_tracking_uri()).get_run(trainer.logger.run_id)
    assert run.info.status == "FAILED" and "NonFiniteLossError" in run.data.tags["error"]
    assert tracking.client().search_model_versions("name='ppo-cartpole'") == []


def test_cli_exits_3_with_the_update_number(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    cfg = small_config(**{"train.checkpoint_dir": "ck"})
    _diverged_checkpoint(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.run(
        [sys.executable, "-m", "ppo.cli", "train", "-c", str(path), "--resume", "--no-mlflow"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3
    assert "non-finite loss at update 6" in proc.stderr and "Traceback" not in proc.stderr
