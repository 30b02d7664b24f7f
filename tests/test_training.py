"""Trainer behaviour on a tiny config (one compiled program for the whole module)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppo import CartPoleWrapper, PPOAgent, PPOTrainer
from tests.helpers import LOSS_KEYS, small_config

TIMING_KEYS = {"env_steps_per_s", "wall_s"}


def _strip(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def _leaves(trainer):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # this module's $PPO_HOME, unset again after it
        mp.setenv("PPO_HOME", str(tmp_path_factory.mktemp("home")))
        trainer = PPOTrainer(config=small_config())
        calls = []
        result = trainer.train(callback=calls.append)
        yield trainer, result, calls


def test_result_and_callback_contract(reference_run):
    trainer, result, calls = reference_run
    for key in (
        "converged",
        "episodes",
        "env_steps",
        "best_avg_reward",
        "final_eval",
        "wall_time_s",
        "history",
    ):
        assert key in result
    assert result["env_steps"] == 128 * 5 * 6 and result["stop_reason"] == "max_env_steps"
    assert len(result["history"]) == 6 and not result["converged"]
    assert set(result["final_eval"]) >= {"avg_reward", "std_reward", "min_reward", "max_reward", "returns"}
    assert len(calls) == 6
    assert all({"episode", "env_steps", "step_metrics"} <= set(c) for c in calls)
    assert "avg_reward" in calls[-1]["step_metrics"]
    assert any("eval_metrics" in c for c in calls), "eval_frequency=40 episodes must trigger evaluations"
    assert [c["env_steps"] for c in calls] == [640 * (i + 1) for i in range(6)]
    row = result["history"][-1]
    for key in LOSS_KEYS:
        assert np.isfinite(row[key])
    assert row["episodes"] > 0


def test_same_config_and_seed_give_same_numbers(reference_run):
    trainer, result, _ = reference_run
    again = PPOTrainer(config=small_config())
    result2 = again.train()
    assert _strip(result2["history"]) == _strip(result["history"])
    for a, b in zip(_leaves(trainer), _leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seed_gives_different_numbers(reference_run):
    _, result, _ = reference_run
    other = PPOTrainer(config=small_config(**{"train.seeds": [5, 1]}))
    assert _strip(other.train()["history"]) != _strip(result["history"])


def test_resume_after_stop_equals_uninterrupted(reference_run, tmp_path):
    trainer, result, _ = reference_run
    cfg = small_config(**{"train.checkpoint_dir": "resume-test"})  # inside $PPO_HOME
    first = PPOTrainer(config=cfg).train(callback=lambda info: info["env_steps"] < 1280)
    assert first["stop_reason"] == "callback" and first["env_steps"] == 1280
    resumed = PPOTrainer(config=cfg)
    out = resumed.train(resume=True)
    assert out["resumed_from_chunk"] == 2 and out["env_steps"] == result["env_steps"]
    for a, b in zip(_leaves(trainer), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _strip(out["history"]) == _strip(result["history"])


def test_reference_objects_and_evaluate(reference_run):
    trainer, _, _ = reference_run
    obs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    actions = trainer.agent.predict(obs, deterministic=True)
    assert actions.shape == (7,) and actions.dtype == np.int64 and set(actions) <= {0, 1}
    g = trainer.evaluate(num_episodes=5)
    j = trainer.evaluate(num_episodes=5, backend="jax")
    for out in (g, j):
        assert set(out) >= {"avg_reward", "std_reward", "min_reward", "max_reward", "returns"}
        assert len(out["returns"]) == 5
    both = trainer.evaluate(num_episodes=4, all_seeds=True)
    assert len(both["returns"]) == 8 and len(both["per_seed_avg"]) == 2
    with pytest.raises(ValueError, match="backend"):
        trainer.evaluate(3, backend="torch")


def test_agent_and_env_objects(tmp_path):
    agent = PPOAgent(observation_dim=4, action_dim=2)
    env = CartPoleWrapper()
    trainer = PPOTrainer(agent=agent, env=env, max_episodes=1000, target_reward=195.0, enable_mlflow=False)
    assert trainer.config.train.max_episodes == 1000 and trainer.config.env.id == "CartPole-v1"
    agent.save(tmp_path / "a")
    loaded = PPOAgent.load(tmp_path / "a")
    obs = np.random.default_rng(1).normal(size=(16, 4))
    np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))
    with pytest.raises(ValueError, match="do not match"):
        PPOTrainer(agent=PPOAgent(6, 3), env=env)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        agent.predict(np.zeros((2, 3)))


def test_the_trainer_talks_to_its_logger_through_the_run_logger_protocol(ppo_home):
    """Any object with start/log_row/log_result/end/run_id will do: the trainer never reads MLflow."""
    calls = []

    class Recorder:
        run_id = None

        def start(self, config, resumed=False, run_dir=None):
            calls.append(("start", config.config_hash(), resumed, run_dir))
            self.run_id = "run-1"
            return self.run_id

        def log_row(self, row):
            calls.append(("row", row["chunk"]))

        def log_result(self, result, agent, config):
            calls.append(("result", result["stop_reason"], agent, config.config_hash()))

        def end(self, status="FINISHED", error=None):
            calls.append(("end", status, error))

    trainer = PPOTrainer(config=small_config(**{"train.checkpoint_dir": "recorded"}), logger=Recorder())
    result = trainer.train()
    h = trainer.config.config_hash()
    assert calls == [
        ("start", h, False, trainer.checkpoint_dir),
        *[("row", i + 1) for i in range(6)],
        ("result", "max_env_steps", trainer.agent, h),
        ("end", "FINISHED", None),
    ]
    assert result["run_id"] == "run-1"


def test_restore_loads_into_the_states_shapes_without_running_init(reference_run, monkeypatch):
    """restore() (the evaluate and report tasks) builds its template with jax.eval_shape: no init runs."""
    from ppo.checkpoint import CheckpointError, load_checkpoint
    from ppo.runtime import Runtime

    trainer = reference_run[0]
    expected_state, expected_meta = load_checkpoint(trainer.checkpoint_dir, trainer.init_state())  # concrete
    monkeypatch.setattr(Runtime, "init_state", lambda self: pytest.fail("restore() ran the jitted init"))
    restored = PPOTrainer(config=small_config())
    assert restored.restore() == expected_meta and expected_meta["finished"]
    for a, b in zip(jax.tree.leaves(expected_state), jax.tree.leaves(restored.state), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    best = expected_meta["best_seed_index"]
    for a, b in zip(
        jax.tree.leaves(restored.agent.params), jax.tree.leaves(expected_state.params), strict=True
    ):
        np.testing.assert_array_equal(a, np.asarray(b)[best])
    other = PPOTrainer(config=small_config(**{"ppo.hidden_sizes": [8]}))
    with pytest.raises(CheckpointError, match="shapes"):
        load_checkpoint(trainer.checkpoint_dir, other.runtime.state_shapes())


def test_resuming_a_finished_run_runs_no_init_and_compiles_nothing(reference_run, monkeypatch):
    """train(resume=True) on a finished checkpoint loads into the state's shapes and hands back the result:
    neither the jitted init nor a chunk compile runs (they used to, only to be thrown away)."""
    from ppo.runtime import Runtime

    trainer, result, _ = reference_run
    monkeypatch.setattr(Runtime, "init_state", lambda self: pytest.fail("resume ran the jitted init"))
    monkeypatch.setattr(Runtime, "compile_ahead", lambda self, n: pytest.fail("resume compiled a chunk"))
    again = PPOTrainer(config=small_config())
    out = again.train(resume=True)
    assert out["resumed_from_chunk"] is not None and out["env_steps"] == result["env_steps"]
    for a, b in zip(jax.tree.leaves(again.agent.params), jax.tree.leaves(trainer.agent.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_trainer_from_a_config_has_its_agent_before_training_but_evaluates_only_a_trained_one(ppo_home):
    # README's Python API: from_config(...).agent was None until train(); now the config's network, with
    # fresh parameters, answers predict() at once, and evaluate() still refuses to score it as trained
    import numpy as np

    trainer = PPOTrainer.from_config(None, seeds=[0], **{"ppo.hidden_sizes": [16]})
    actions = trainer.agent.predict(np.zeros((3, 4), np.float32))
    assert actions.shape == (3,) and trainer.agent.hidden_sizes == (16,)
    with pytest.raises(RuntimeError, match="no trained agent"):
        trainer.evaluate(num_episodes=1)


def test_outside_the_ppo_command_a_process_waits_for_its_compile_ahead_at_exit(tmp_path):
    """A script (not the ``ppo`` command) that ends while a chunk compiles ahead waits for the compile:
    ending the interpreter under a daemon thread inside XLA's compiler crashed it (SIGSEGV)."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    script = (
        "import atexit, sys\n"
        "from tests.helpers import small_config\n"
        "from ppo.trainer import PPOTrainer\n"
        "from ppo.runtime import _COMPILED\n"
        "PPOTrainer(config=small_config()).runtime.compile_ahead(2)\n"
        "(job,) = _COMPILED.values()\n"
        "atexit.register(lambda: print('done at exit:', job.done(), flush=True))\n"
        "sys.exit(7)\n"
    )
    env = {**os.environ, "PPO_HOME": str(tmp_path), "PPO_JAX_CACHE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 7, out.stderr[-2000:]
    assert "done at exit: True" in out.stdout
