"""ppo record: a registered model's greedy episodes in the real env, as an MP4 that decodes."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import pytest
from typer.testing import CliRunner

from flows.cli import app
from ppo import tracking
from tests.helpers import small_config, tiny_breakout_config

pytestmark = pytest.mark.slow


def test_record_writes_the_models_episodes_as_an_mp4(ppo_home, tmp_path):
    av = pytest.importorskip("av")
    from ppo import PPOTrainer

    trainer = PPOTrainer(
        config=small_config(**{"tracking.enabled": True, "train.seeds": [3]}), enable_mlflow=True
    )
    run_id = trainer.train()["run_id"]
    version = tracking.register_model(run_id, "ppo-cartpole")  # by hand: recording needs no gate
    out = tmp_path / "episodes.mp4"
    result = CliRunner().invoke(
        app,
        ["record", "-m", f"models:/ppo-cartpole/{version}", "--episodes", "2", "--seed", "7", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["env"] == "CartPole-v1" and summary["fps"] == 50 and summary["path"] == str(out)

    # the episodes are the model's greedy episodes in real gymnasium, from reset seeds 7 and 8
    expected = []
    for seed in (7, 8):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(trainer.agent.predict(obs[None])[0]))
            total, done = total + reward, terminated or truncated
        expected.append(total)
    assert summary["returns"] == expected and summary["lengths"] == [int(r) for r in expected]

    # a real H.264 video: one frame per step plus each episode's first, of the env's rendering
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
    assert len(frames) == summary["frames"] == sum(summary["lengths"]) + 2
    assert frames[0].shape == (400, 600, 3)  # CartPole's rgb_array size
    assert frames[0].std() > 1  # a picture, not a blank frame


def test_record_of_a_minatar_model_is_quiet_and_uses_a_default_frame_rate(ppo_home, tmp_path):
    """minatar's games declare no render fps and render float frames: the recording takes 30 fps and the
    frames as they are, without gymnasium's env checker warning about either on every recording."""
    pytest.importorskip("av")
    from ppo import PPOTrainer

    run_id = PPOTrainer(config=tiny_breakout_config(), enable_mlflow=True).train()["run_id"]
    version = tracking.register_model(run_id, "ppo-breakout-minatar")  # by hand: recording needs no gate
    out = tmp_path / "breakout.mp4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(
            app,
            ["record", "-m", f"models:/ppo-breakout-minatar/{version}", "--episodes", "1", "-o", str(out)],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["env"] == "Breakout-MinAtar" and summary["fps"] == 30 and out.stat().st_size > 0
    assert [str(w.message) for w in caught if "passive_env_checker" in w.filename] == []


def test_record_of_a_missing_model_is_one_line_and_exit_1(ppo_home, tmp_path):
    pytest.importorskip("av")
    result = CliRunner().invoke(
        app, ["record", "-m", "models:/ppo-cartpole/99", "-o", str(tmp_path / "x.mp4")]
    )
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()
