"""Gymnasium envs without a JAX twin (LunarLander-v3, any registered Box-observation env): trained through
host-side vector envs with the policy step and the PPO update jitted (ppo/host_program.py), through the
same trainer, books, checkpoints and evaluation as the JAX path."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppo import PPOTrainer
from ppo.config import ConfigError, build_config
from ppo.envs import env_spec


def _config(env_id: str, **sections):
    base = {
        "env": {"id": env_id, "num_envs": 8},
        "ppo": {"batch_size": 256, "minibatch_size": 128, "epochs_per_update": 2},
        "train": {"max_env_steps": 256 * 4, "seeds": [0, 1], "updates_per_chunk": 2, "eval_episodes": 2},
        "tracking": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return build_config(base)


def test_envs_without_a_jax_twin_are_read_off_gymnasium():
    lander = env_spec("LunarLander-v3")
    assert lander.host and lander.observation_shape == (8,) and lander.action.n == 4
    assert lander.reward_threshold() == 200.0 and lander.max_episode_steps() == 1000
    walker = env_spec("BipedalWalker-v3")  # any registered env with Box observations: read off its spaces
    assert walker.host and walker.observation_shape == (24,) and not walker.action.discrete
    assert walker.action.n == 4 and walker.reward_threshold() == 300.0
    cfg = build_config({"env": {"id": "BipedalWalker-v3"}})
    assert cfg.model_name == "ppo-bipedalwalker-v3" and cfg.env.max_steps_per_episode == 1600
    with pytest.raises(ConfigError, match="Box observations"):
        build_config({"env": {"id": "CliffWalking-v1"}})  # discrete observations


def test_host_books_count_every_episode_and_truncation(ppo_home):
    """CartPole through the host path with a 5-step limit: a random-ish early policy rarely falls within
    5 steps, so nearly every episode is cut by the limit; the books count each one exactly once (episodes
    = finished episodes of the envs), and the update/step counters follow the budget."""
    cfg = _config(
        "CartPole-v1",
        env={"backend": "host", "max_steps_per_episode": 5},
        train={"max_env_steps": 256 * 3, "seeds": [3], "updates_per_chunk": 3},
    )
    trainer = PPOTrainer(config=cfg, enable_mlflow=False)
    result = trainer.train()
    steps = 256 * 3
    assert result["env_steps"] == steps
    episodes = result["episodes"]
    assert steps // 5 - 8 * 1 <= episodes <= steps // 5, episodes  # at most one episode per env in flight
    state = trainer.state
    assert int(np.asarray(state.update)[0]) == 3 and state.env_state is None


def test_lunarlander_trains_checkpoints_and_resumes_on_the_host(ppo_home):
    cfg = _config("LunarLander-v3", train={"checkpoint_every": 1})
    first = PPOTrainer(config=cfg, enable_mlflow=False)
    stopped = first.train(callback=lambda info: False)  # stop after the first chunk, keep its checkpoint
    assert stopped["stop_reason"] == "callback"
    resumed = PPOTrainer(config=cfg, enable_mlflow=False)
    result = resumed.train(resume=True)
    assert result["resumed_from_chunk"] == 1 and result["env_steps"] == 256 * 4
    assert np.asarray(resumed.state.update).tolist() == [4, 4]
    out = resumed.evaluate(num_episodes=3, all_seeds=True, seed=5)
    assert len(out["per_seed_avg"]) == 2 and all(np.isfinite(out["per_seed_avg"]))
    with pytest.raises(ValueError, match="no JAX implementation"):
        resumed.evaluate(num_episodes=2, backend="jax")


def test_host_path_refuses_an_env_with_no_gymnasium_side(monkeypatch):
    monkeypatch.setenv("PPO_USER_ENV_MODULES", "examples,tests.test_user_env")
    with pytest.raises(ConfigError, match="has none"):
        build_config(
            {"env": {"id": "tests.test_user_env:NoTwinPointEnv", "backend": "host"}},
        )


@pytest.mark.slow
def test_host_path_learns_cartpole_like_the_jax_path(ppo_home):
    """The shipped CartPole recipe through host envs (one seed): the greedy policy solves it."""
    from tests.helpers import ROOT

    trainer = PPOTrainer.from_config(
        ROOT / "configs" / "cartpole.yaml", enable_mlflow=False, seeds=[0], **{"env.backend": "host"}
    )
    result = trainer.train()
    assert result["converged"], result["stop_reason"]
    out = trainer.evaluate(num_episodes=50, seed=77)
    assert out["avg_reward"] >= 475, out["avg_reward"]


def _workers() -> list:
    import psutil

    return [p for p in psutil.Process().children() if "ppo.host_envs" in " ".join(p.cmdline())]


def _trained_state(workers: str, monkeypatch, config) -> list[np.ndarray]:
    monkeypatch.setenv("PPO_HOST_WORKERS", workers)
    trainer = PPOTrainer(config=config, enable_mlflow=False)
    result = trainer.train()
    assert _workers() == []  # a run gives its worker processes back when it ends
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state))]
    return [np.asarray(result["env_steps_per_seed"]), *leaves]


def test_envs_split_over_worker_processes_change_no_number(ppo_home, monkeypatch, capfd):
    """Two seeds' envs stepped here and in two worker processes (16 envs in parts of 5, 6, 5: each seed's
    envs span two processes) train bit for bit as when this process steps them all; a seed that
    converges first is frozen (its envs stop) in both."""
    cfg = _config(
        "CartPole-v1",
        env={"backend": "host"},
        train={"max_env_steps": 256 * 8, "target_reward": 20.0, "convergence_window": 5, "seeds": [0, 5]},
    )
    alone = _trained_state("0", monkeypatch, cfg)
    split = _trained_state("2", monkeypatch, cfg)
    assert "could not make them" not in capfd.readouterr().err  # the workers stepped their parts
    assert alone[0].tolist() != [256 * 8, 256 * 8]  # a seed stopped early: the frozen path ran
    assert len(alone) == len(split)
    for a, b in zip(alone, split, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_env_a_worker_cannot_make_steps_here_with_a_note(ppo_home, monkeypatch, capfd):
    """An env registered at run time in this process only: a worker cannot make it, so every env steps
    in this process and the run says so (and trains)."""
    import gymnasium as gym

    gym.register("PpoOnlyHereCartPole-v0", entry_point="gymnasium.envs.classic_control:CartPoleEnv")
    monkeypatch.setenv("PPO_HOST_WORKERS", "1")
    try:
        cfg = _config("PpoOnlyHereCartPole-v0", env={"max_steps_per_episode": 50})
        result = PPOTrainer(config=cfg, enable_mlflow=False).train()
    finally:
        del gym.envs.registry["PpoOnlyHereCartPole-v0"]
    assert result["env_steps"] == 256 * 4
    assert "all step in this process: a worker process could not make them" in capfd.readouterr().err


def test_a_worker_that_dies_is_a_clear_error():
    from ppo.host_envs import HostEnvs, WorkerError

    envs = HostEnvs("LunarLander-v3", num_seeds=1, num_envs=4, max_steps=100, workers=1)
    try:
        obs = envs.reset([[1, 2, 3, 4]])
        assert obs.shape == (1, 4, 8)
        envs.workers[0].process.kill()
        with pytest.raises(WorkerError, match="ended"):
            envs.step(np.zeros((1, 4), np.int64), obs, np.array([True]))
    finally:
        envs.close()


def test_host_envs_split_evenly_over_parts():
    from ppo.host_envs import split

    assert split(1, 16, 2) == [[(0, 0, 8)], [(0, 8, 16)]]
    assert split(2, 8, 3) == [[(0, 0, 5)], [(0, 5, 8), (1, 0, 3)], [(1, 3, 8)]]
    assert split(5, 16, 1) == [[(i, 0, 16) for i in range(5)]]


def test_a_run_whose_worker_died_fails_clearly_and_resumes_on_fresh_envs(ppo_home, monkeypatch):
    """A worker killed mid-run: training stops with the worker's error (its checkpoint kept), and a resume
    in the same process (a task retry) opens fresh envs and finishes."""
    from ppo.host_envs import WorkerError

    monkeypatch.setenv("PPO_HOST_WORKERS", "1")
    cfg = _config("CartPole-v1", env={"backend": "host"}, train={"checkpoint_every": 1})

    def kill_workers(info) -> bool:
        assert _workers(), "the run has a worker"
        for child in _workers():
            child.kill()
            child.wait()
        return True

    with pytest.raises(WorkerError, match="ended"):
        PPOTrainer(config=cfg, enable_mlflow=False).train(callback=kill_workers)
    resumed = PPOTrainer(config=cfg, enable_mlflow=False)
    result = resumed.train(resume=True)
    assert result["resumed_from_chunk"] == 1 and result["env_steps"] == 256 * 4
