"""The host's books (ppo/progress.py) on their own: pure NumPy, nothing compiled."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from ppo import progress
from ppo.progress import Books


def _metrics(ran, *, loss=1.0, completed=None, returns=None):
    """A chunk's per-seed, per-update metrics; what did not run reports zeros (as the program does)."""
    ran = np.asarray(ran, bool)
    zeros = np.zeros(ran.shape)

    def where(v):
        return np.where(ran, v, 0.0)

    completed = np.ones(ran.shape, int) if completed is None else np.asarray(completed)
    returns = np.full(ran.shape, 10.0) if returns is None else np.asarray(returns, float)
    return SimpleNamespace(
        ran=ran,
        policy=where(loss),
        value=where(2 * loss),
        entropy=where(0.5),
        approx_kl=where(0.01),
        clip_fraction=where(0.1),
        grad_norm=where(3.0),
        total_loss=where(loss) + zeros,
        episodes_completed=np.where(ran, completed, 0),
        completed_return=np.where(ran, returns, 0.0),
    )


def test_the_books_import_no_jax_nor_mlflow():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(progress.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"jax", "flax", "optax", "mlflow"}


def test_convergence_needs_patience_and_resets_when_the_mean_drops():
    books = Books.new(2, eval_frequency=40, config_hash="h")
    trained = np.array([True, True])

    def step(means, episodes):
        progress.update_convergence(
            books, means, np.asarray(episodes), trained, window=10, target_reward=100.0, patience=20
        )

    step([120.0, 50.0], [5, 5])  # at the target, but fewer episodes than the window
    assert books.converged_since == [None, None] and books.best_avg == [120.0, 50.0]
    step([110.0, 60.0], [12, 12])  # seed 0 meets the criterion from episode 12
    assert books.converged_since == [12, None] and books.converged == [False, False]
    assert books.best_avg == [120.0, 60.0]  # the best window mean, not the latest
    step([101.0, 60.0], [31, 31])  # 19 episodes of patience: not yet
    assert books.converged == [False, False]
    step([100.0, 60.0], [32, 32])  # 20: converged
    assert books.converged == [True, False]
    step([10.0, 60.0], [40, 40])  # a converged seed's books stop changing
    assert books.converged == [True, False] and books.converged_since == [12, None]

    other = Books.new(1, 40, "h")
    progress.update_convergence(other, [150.0], np.array([12]), np.array([True]), 10, 100.0, 20)
    progress.update_convergence(other, [90.0], np.array([20]), np.array([True]), 10, 100.0, 20)
    assert other.converged_since == [None]  # dropped below the target: patience starts again
    progress.update_convergence(other, [150.0], np.array([25]), np.array([False]), 10, 100.0, 20)
    assert other.converged_since == [None] and other.best_avg == [150.0]  # did not train: nothing counted


def test_zero_patience_converges_at_once():
    books = Books.new(1, 40, "h")
    progress.update_convergence(books, [100.0], np.array([10]), np.array([True]), 10, 100.0, 0)
    assert books.converged == [True] and books.converged_since == [10]


def test_active_seeds_and_stop_reasons_per_seed():
    books = Books.new(4, 40, "h")
    books.converged = [True, False, False, False]
    episodes, updates = np.array([50, 100, 30, 20]), np.array([5, 6, 10, 3])
    active = progress.active_seeds(books, episodes, updates, max_episodes=100, total_updates=10)
    assert active.tolist() == [False, False, False, True]
    reason, per_seed = progress.stop_reasons(books, episodes, updates, 100, 10)
    assert per_seed == ["converged", "max_episodes", "max_env_steps", "running"]
    assert reason == "max_env_steps"  # no callback: the budget that stopped the seeds
    books.stopped_by_callback = True
    assert progress.stop_reasons(books, episodes, updates, 100, 10)[0] == "callback"
    assert progress.active_seeds(books, episodes, updates, 100, None).tolist() == [False, False, True, True]
    assert progress.seed_stop_reason(False, 5, 10**9, 100, None) == "running"  # no env-step budget

    books = Books.new(2, 40, "h")
    books.converged = [True, True]
    assert progress.stop_reasons(books, np.array([1, 1]), np.array([1, 1]), 100, 10) == (
        "converged",
        ["converged", "converged"],
    )
    books.converged = [True, False]
    books.stopped_by_callback = True  # nothing was still running: the callback is not the reason
    assert progress.stop_reasons(books, np.array([1, 100]), np.array([1, 1]), 100, 10)[0] == "max_episodes"


def test_a_row_counts_only_the_updates_that_ran():
    books = Books.new(2, 40, "h")
    books.chunk, books.converged = 3, [True, False]
    # seed 0 (seed id 7) is frozen: nothing ran; seed 1 (seed id 9) ran 2 of 3 updates
    ran = [[False, False, False], [True, True, False]]
    metrics = _metrics(
        ran,
        loss=np.array([[9.0, 9.0, 9.0], [1.0, 3.0, 99.0]]),
        completed=[[0, 0, 0], [2, 1, 5]],
        returns=[[0, 0, 0], [30.0, 12.0, 1000.0]],
    )
    means = progress.window_means(np.array([[5.0, 5.0, 0.0], [20.0, 40.0, 60.0]]), np.array([2, 3]), 3)
    assert means == [5.0, 40.0]
    row = progress.build_row(
        books, metrics, np.array([2, 3]), means, [7, 9], env_steps=384, batch=128, dt=0.5, wall_s=1.25
    )
    assert row["chunk"] == 3 and row["update"] == 3 and row["env_steps"] == 384
    assert row["episodes"] == 3  # the trained seeds' count; the frozen seed's does not hold it back
    assert row["loss/policy"] == 2.0 and row["loss/value"] == 4.0  # the discarded update's 99 is masked out
    assert row["episode_return"] == 42.0 / 3  # completed returns over completed episodes, ran updates only
    assert row["avg_reward"] == 40.0  # window means of the seeds that trained
    assert row["env_steps_per_s"] == 2 * 128 / 0.5 and row["converged_seeds"] == 1 and row["wall_s"] == 1.25
    assert "episode_return/seed_7" not in row and row["avg_reward/seed_9"] == 40.0
    assert row["episode_return/seed_9"] == 14.0

    nothing = progress.build_row(
        books, _metrics([[False], [False]]), np.array([2, 3]), [None, None], [7, 9], 384, 128, 0.0, 2.0
    )
    assert (
        nothing["loss/policy"] is None and nothing["avg_reward"] is None and nothing["episode_return"] is None
    )
    assert nothing["env_steps_per_s"] is None and nothing["episodes"] == 2  # none trained: every seed's count


def test_evaluations_move_each_seeds_next_point():
    books = Books.new(2, eval_frequency=40, config_hash="h")
    episodes, trained = np.array([85, 39]), np.array([True, True])
    due = progress.due_for_eval(books, episodes, trained)
    assert due == [0]
    row: dict = {}
    progress.record_eval(
        books,
        row,
        {"avg_reward": 300.0, "std_reward": 1.0, "per_seed_avg": [300.0]},
        due,
        episodes,
        40,
        [5, 6],
    )
    assert books.next_eval_at == [120, 40] and len(books.evals) == 1
    assert row == {"eval/return_mean": 300.0, "eval/return_std": 1.0, "eval/return_mean/seed_5": 300.0}
    assert progress.due_for_eval(books, np.array([200, 200]), np.array([False, True])) == [1]
    info = progress.callback_info(
        {"episodes": 3, "env_steps": 10, "a": 1, "a/seed_1": 2}, {"avg_reward": 1.0, "returns": [1]}
    )
    assert info == {
        "episode": 3,
        "env_steps": 10,
        "step_metrics": {"episodes": 3, "env_steps": 10, "a": 1},
        "eval_metrics": {"avg_reward": 1.0},
    }


def test_non_finite_losses_of_discarded_updates_do_not_count():
    ran = np.array([[True, False], [True, True]])
    assert progress.first_non_finite(np.array([[1.0, np.nan], [1.0, 2.0]]), ran) is None
    assert progress.first_non_finite(np.array([[1.0, np.nan], [1.0, np.inf]]), ran) == (1, 1)


def test_books_round_trip_in_the_checkpoint_layout():
    books = Books.new(2, 40, "abc")
    books.history.append({"chunk": 1})
    d = books.to_dict()
    assert list(d) == [
        "chunk",
        "converged_since",
        "converged",
        "best_avg",
        "next_eval_at",
        "history",
        "evals",
        "config_hash",
        "stopped_by_callback",
    ]
    books.best_seed_index, books.final_eval, books.finished, books.stop_reason = (
        1,
        {"x": 1},
        True,
        "converged",
    )
    d = json.loads(json.dumps(books.to_dict()))
    assert list(d)[-4:] == ["best_seed_index", "final_eval", "finished", "stop_reason"]
    assert Books.from_dict(d) == books and Books.from_dict(d).to_dict() == d


def test_an_old_checkpoint_with_one_eval_counter_for_all_seeds_loads():
    old = {
        "chunk": 4,
        "converged_since": [None, 30, None],
        "converged": [False, False, True],
        "best_avg": [1.0, 2.0, None],
        "next_eval_at": 80,
        "history": [{"chunk": 4}],
        "evals": [],
        "config_hash": "h",
        "stopped_by_callback": True,
        "finished": True,
        "stop_reason": "callback",
        "best_seed_index": 2,
        "final_eval": {"avg_reward": 3.0},
        "unknown": "kept",
    }
    books = Books.from_dict(old, n_seeds=3)
    assert books.next_eval_at == [80, 80, 80] and books.chunk == 4 and books.stopped_by_callback
    assert books.finished and books.stop_reason == "callback" and books.best_seed_index == 2
    assert books.to_dict()["unknown"] == "kept" and books.to_dict()["next_eval_at"] == [80, 80, 80]
    assert Books.from_dict(old).next_eval_at == [80, 80, 80]  # the seed count from the books themselves
    books.next_eval_at[0] += 40
    assert old["next_eval_at"] == 80  # the input is not changed


def test_summary():
    books = Books.new(2, 40, "h")
    books.converged, books.best_avg = [True, False], [200.0, None]
    books.evals.append({"avg_reward": 1.0})
    out = progress.summary(
        books,
        [3, 4],
        np.array([50, 60]),
        np.array([7, 9]),
        128,
        ["converged", "max_episodes"],
        "max_episodes",
        {"avg_reward": 5.0},
        best=1,
    )
    assert out["converged"] is False and out["converged_seeds"] == [3] and out["best_seed"] == 4
    assert out["episodes"] == 50 and out["episodes_per_seed"] == [50, 60]
    assert out["env_steps"] == 9 * 128 and out["env_steps_per_seed"] == [7 * 128, 9 * 128]
    assert out["best_avg_reward"] == 200.0 and out["best_avg_reward_per_seed"] == [200.0, None]
    assert out["evaluations"] == [{"avg_reward": 1.0}]
