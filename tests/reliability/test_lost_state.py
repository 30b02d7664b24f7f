"""Damaged state on disk gets one readable error, not a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from ppo import PPOTrainer
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


def test_evaluate_on_a_garbled_checkpoint_says_so(ppo_home, tmp_path):
    import yaml

    cfg = small_config(**{"train.max_env_steps": 128 * 5, "train.seeds": [0]})
    trainer = PPOTrainer(config=cfg)
    trainer.train()
    (trainer.checkpoint_dir / "checkpoint.msgpack").write_bytes(b"\x93garbage" * 100)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(app, ["evaluate", "--config", str(path), "--episodes", "2"])
    assert result.exit_code == 1, result.output
    assert "unreadable or from another config" in result.output and "Traceback" not in result.output
