"""Learning: the shipped configs solve their envs (evaluated greedily on real gymnasium)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from ppo import PPOTrainer

pytestmark = pytest.mark.slow


def test_cartpole_config_solves_cartpole_for_three_seeds(ppo_home):
    trainer = PPOTrainer.from_config(ROOT / "configs" / "cartpole.yaml", enable_mlflow=False, seeds=[0, 1, 2])
    result = trainer.train()
    assert result["converged"], result["stop_reason"]
    out = trainer.evaluate(num_episodes=100, all_seeds=True, seed=123)
    assert len(out["per_seed_avg"]) == 3
    assert min(out["per_seed_avg"]) >= 475, out["per_seed_avg"]


def test_acrobot_config_solves_acrobot(ppo_home):
    trainer = PPOTrainer.from_config(ROOT / "configs" / "acrobot.yaml", enable_mlflow=False)
    trainer.train()
    out = trainer.evaluate(num_episodes=100, seed=7)
    assert out["avg_reward"] >= -100, out["avg_reward"]
