"""``ppo train``'s progress: measured against the budget that stops the run (env steps per seed), with
the live figures, and complete on ``--resume`` of a finished run (which trains nothing)."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from flows.cli import app


def _train(tmp_path, *extra: str) -> str:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "env": {"id": "CartPole-v1", "num_envs": 4},
                "ppo": {"batch_size": 64, "minibatch_size": 64, "epochs_per_update": 1},
                "train": {"max_env_steps": 1024, "seeds": [0], "updates_per_chunk": 4, "eval_episodes": 2},
                "tracking": {"enabled": False},
            }
        )
    )
    env = {"PPO_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["train", "-c", str(config), *extra], env=env)
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)


def test_the_bar_counts_env_steps_against_the_budget_and_is_full_after_a_resume(tmp_path):
    out = _train(tmp_path)
    bar = next(line for line in out.splitlines() if "steps/s" in line and "/1,024 steps" in line)
    assert "1,024/1,024 steps" in bar and "done" in bar, bar  # 1,024 of the 1,024-step budget, not episodes
    assert "return" in bar and "ETA" in bar, bar
    assert "ep " not in bar, bar  # the old bar: episodes against max_episodes (ended ~0.5% full)
    again = _train(tmp_path, "--resume")  # a finished run: nothing to train, the bar says where it ended
    assert "1,024/1,024 steps" in again, again
