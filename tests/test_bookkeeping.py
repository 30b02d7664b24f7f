"""Per-seed bookkeeping: frozen seeds, exact budgets, the learning-rate schedule.

Several tests start from a real checkpoint in which one seed has been marked converged (frozen), through
the public resume path: that is how a seed that converged early looks to the host loop.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppo import PPOTrainer
from ppo.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import small_config


def _freeze_seed0(cfg, poison: bool = False) -> int:
    """Train one chunk, then mark seed 0 converged in the checkpoint (optionally with NaN parameters)."""
    first = PPOTrainer(config=cfg)
    first.train(callback=lambda info: False)  # one chunk, then stop: a checkpoint with host metadata
    state, host = load_checkpoint(first.checkpoint_dir, first.init_state())
    host.update(converged=[True, False], finished=False)
    if poison:
        state = state.replace(params=jax.tree.map(lambda x: np.asarray(x).copy(), state.params))
        for leaf in jax.tree.leaves(state.params):
            leaf[0] = np.nan
    save_checkpoint(first.checkpoint_dir, state, host)
    return int(np.asarray(state.stats.episodes)[0])


def test_a_frozen_seed_does_not_stop_the_others_evaluating_and_counting(ppo_home):
    cfg = small_config(
        **{"train.checkpoint_dir": "frozen", "train.max_env_steps": 128 * 5 * 8, "train.eval_frequency": 40}
    )
    frozen_at = _freeze_seed0(cfg)
    calls = []
    out = PPOTrainer(config=cfg).train(callback=calls.append, resume=True)
    assert frozen_at < 40  # seed 0 never reaches the first evaluation point again
    assert out["episodes_per_seed"][0] == frozen_at  # frozen: its count stops
    assert out["episodes_per_seed"][1] > 120
    # the reported episode count follows the seed still training, not the frozen one
    assert calls[-1]["episode"] == out["episodes_per_seed"][1]
    evals = [c["eval_metrics"] for c in calls if "eval_metrics" in c]
    assert len(evals) >= 3, "seed 1 passed 40, 80, 120 episodes: it must have been evaluated each time"
    assert all(e["seeds"] == [1] for e in evals)
    assert out["stop_reason_per_seed"] == ["converged", "max_env_steps"]


def test_a_frozen_seeds_discarded_updates_report_nothing(ppo_home):
    cfg = small_config(**{"train.checkpoint_dir": "poisoned", "train.max_env_steps": 128 * 5 * 4})
    _freeze_seed0(cfg, poison=True)  # seed 0's (discarded) updates now produce NaN losses
    trainer = PPOTrainer(config=cfg)
    out = trainer.train(resume=True)  # must not abort: a discarded computation cannot stop a run
    resumed_rows = out["history"][1:]
    assert resumed_rows
    for row in resumed_rows:
        assert "episode_return/seed_0" not in row and "avg_reward/seed_0" not in row
        for key in ("loss/policy", "loss/value", "loss/entropy", "grad_norm"):
            assert np.isfinite(row[key]), (key, row)
    assert np.isnan(np.asarray(jax.tree.leaves(trainer.state.params)[0])[0]).all()  # seed 0 untouched


def test_max_episodes_holds_to_one_update(ppo_home):
    # 20 updates per chunk complete ~100 episodes: a check between chunks overshoots 40 by far
    cfg = small_config(
        **{"train.max_episodes": 40, "train.updates_per_chunk": 20, "train.max_env_steps": 10**6}
    )
    out = PPOTrainer(config=cfg).train()
    # 8 envs x 16 steps per update, a CartPole episode lasts >= 8 steps: <= 16 episodes end per update
    for episodes in out["episodes_per_seed"]:
        assert 40 <= episodes < 40 + 16, out["episodes_per_seed"]
    assert out["stop_reason"] == "max_episodes"


def _count(opt_state) -> int:
    counts = {
        int(np.asarray(leaf).reshape(-1)[0])
        for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
        if "count" in jax.tree_util.keystr(path)
    }
    assert len(counts) == 1, counts
    return counts.pop()


@pytest.mark.parametrize("extra", [0, 100])
def test_max_env_steps_and_the_schedule_end_on_the_last_update(ppo_home, extra):
    budget = 128 * 5 * 6 + extra  # 30 whole updates of 128 steps (+100 steps: not a whole update more)
    cfg = small_config(**{"train.max_env_steps": budget, "ppo.anneal_lr": True, "train.seeds": [0]})
    trainer = PPOTrainer(config=cfg)
    out = trainer.train()
    assert out["env_steps"] == 30 * 128 <= budget
    # the schedule decays over exactly the optimiser steps that run: none of them at lr 0
    steps = 30 * cfg.num_minibatches * cfg.ppo.epochs_per_update
    assert _count(jax.device_get(trainer.state.opt_state)) == steps


def test_evaluations_use_disjoint_episode_streams(ppo_home):
    from ppo.evaluate import STREAM_SPAN, gate_seed, stream_seed

    cfg = small_config(**{"train.eval_frequency": 20, "train.eval_episodes": 3})
    out = PPOTrainer(config=cfg).train()
    blocks = [tuple(e["gym_seeds"]) for e in out["evaluations"]] + [tuple(out["final_eval"]["gym_seeds"])]
    assert len(blocks) >= 4
    # consecutive periodic evaluations used to share n-1 of their n episodes, and the gate's fixed seed
    # was the first periodic evaluation's: now every block is its own
    gate = gate_seed("some-run-id", 3)
    blocks.append((gate, gate + 3))
    for i, (a0, a1) in enumerate(blocks):
        for b0, b1 in blocks[i + 1 :]:
            assert a1 <= b0 or b1 <= a0, blocks
    assert out["final_eval"]["gym_seeds"][0] == stream_seed("final", 0, 3)
    assert all(e["gym_seeds"][1] <= STREAM_SPAN for e in out["evaluations"])  # periodic stream's range
    assert STREAM_SPAN * 2 <= gate < STREAM_SPAN * 3


@pytest.mark.parametrize("patience", [0, 30])
def test_convergence_needs_the_window_held_for_patience_episodes(ppo_home, patience):
    # a random CartPole policy already averages ~20: every seed converges, after `patience` more episodes
    cfg = small_config(
        **{
            "train.target_reward": 12.0,
            "train.convergence_window": 10,
            "train.early_stopping_patience": patience,
            "train.updates_per_chunk": 1,
            "train.max_env_steps": 128 * 200,
        }
    )
    calls = []
    out = PPOTrainer(config=cfg).train(callback=calls.append)
    assert out["converged"] and out["stop_reason"] == "converged"
    assert all(e >= 10 + patience for e in out["episodes_per_seed"]), out["episodes_per_seed"]
    if patience == 0:  # converged at the first chunk whose window average held
        assert len(calls) <= 3
    else:
        assert all(c["step_metrics"]["converged_seeds"] < 2 for c in calls if c["episode"] < 10 + patience)
