"""The host's books between compiled chunks: typed, pure NumPy (no JAX), unit-tested.

:class:`Books` holds every seed's bookkeeping (convergence, best window mean, next evaluation point,
history rows, evaluations); it is saved in the checkpoint as JSON (:meth:`Books.to_dict`) and read back
(:meth:`Books.from_dict`, older layouts included). The functions here decide which seeds still train,
when a seed has converged, why each seed stopped, and what one history row and the final result say.
Every seed keeps its own books: a frozen seed's episodes and metrics stop changing, its discarded
updates (``ran`` is False) report nothing, and the other seeds go on counting and evaluating.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the keys :meth:`Books.to_dict` writes once the run has finished, in the order they were added
_FINAL_KEYS = ("best_seed_index", "final_eval", "finished", "stop_reason")


#: the per-update losses: history key -> :class:`ppo.program.UpdateMetrics` field (a chunk's row holds
#: their means over the applied updates; ppo.trainer.update_points, every update's value)
LOSS_FIELDS = {
    "loss/policy": "policy",
    "loss/value": "value",
    "loss/entropy": "entropy",
    "loss/approx_kl": "approx_kl",
    "loss/clip_fraction": "clip_fraction",
    "grad_norm": "grad_norm",
}


@dataclass
class Books:
    """Per-seed bookkeeping of one training run (lists are indexed by seed position)."""

    chunk: int
    converged_since: list[int | None]
    converged: list[bool]
    best_avg: list[float | None]
    next_eval_at: list[int]
    history: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    config_hash: str
    stopped_by_callback: bool = False
    # set when the run finishes (and kept by a checkpoint written after a resume)
    best_seed_index: int | None = None
    final_eval: dict[str, Any] | None = None
    finished: bool | None = None
    stop_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of a checkpoint, kept as they are

    @classmethod
    def new(cls, n_seeds: int, eval_frequency: int, config_hash: str) -> Books:
        return cls(
            chunk=0,
            converged_since=[None] * n_seeds,
            converged=[False] * n_seeds,
            best_avg=[None] * n_seeds,
            next_eval_at=[eval_frequency] * n_seeds,
            history=[],
            evals=[],
            config_hash=config_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's JSON metadata (the same keys, in the same order, as before the books were
        typed)."""
        out: dict[str, Any] = {
            "chunk": self.chunk,
            "converged_since": self.converged_since,
            "converged": self.converged,
            "best_avg": self.best_avg,
            "next_eval_at": self.next_eval_at,
            "history": self.history,
            "evals": self.evals,
            "config_hash": self.config_hash,
            "stopped_by_callback": self.stopped_by_callback,
        }
        out.update(self.extra)
        for key in _FINAL_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], n_seeds: int | None = None) -> Books:
        """Books from a checkpoint's metadata; an old one-counter-for-all ``next_eval_at`` (an int) is
        given to every seed (``n_seeds``, default: the length of ``converged``)."""
        data = dict(data)
        n = len(data["converged"]) if n_seeds is None else n_seeds
        next_eval_at = data.pop("next_eval_at")
        if not isinstance(next_eval_at, list):
            next_eval_at = [next_eval_at] * n
        known = {
            "chunk",
            "converged_since",
            "converged",
            "best_avg",
            "history",
            "evals",
            "config_hash",
            "stopped_by_callback",
            *_FINAL_KEYS,
        }
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(
            chunk=data["chunk"],
            converged_since=list(data["converged_since"]),
            converged=list(data["converged"]),
            best_avg=list(data["best_avg"]),
            next_eval_at=list(next_eval_at),
            history=list(data["history"]),
            evals=list(data["evals"]),
            config_hash=data["config_hash"],
            stopped_by_callback=bool(data.get("stopped_by_callback", False)),
            best_seed_index=data.get("best_seed_index"),
            final_eval=data.get("final_eval"),
            finished=data.get("finished"),
            stop_reason=data.get("stop_reason"),
            extra=extra,
        )


# ---------------------------------------------------------------------- budgets and convergence
def active_seeds(
    books: Books, episodes: np.ndarray, updates: np.ndarray, max_episodes: int, total_updates: int | None
) -> np.ndarray:
    """Seeds that may train on: not converged, and neither budget (episodes, env steps) spent."""
    out_of_episodes = np.asarray(episodes) >= max_episodes
    n = len(books.converged)
    out_of_steps = (np.asarray(updates) >= total_updates) if total_updates is not None else np.zeros(n, bool)
    return ~(np.asarray(books.converged) | out_of_episodes | out_of_steps)


def window_means(window: np.ndarray, episodes: np.ndarray, size: int) -> list[float | None]:
    """Each seed's mean return over its last ``size`` episodes (fewer while it has fewer; None with none)."""
    return [float(window[i, : min(int(e), size)].mean()) if e > 0 else None for i, e in enumerate(episodes)]


def update_convergence(
    books: Books,
    means: list[float | None],
    episodes: np.ndarray,
    trained: np.ndarray,
    window: int,
    target_reward: float | None,
    patience: int,
) -> None:
    """After a chunk: best window mean, and convergence (the window mean at or above ``target_reward``
    for ``patience`` more episodes), for each seed that trained in it and has not converged yet."""
    for i, m in enumerate(means):
        if m is None or books.converged[i] or not trained[i]:
            continue
        best = books.best_avg[i]
        if best is None or m > best:
            books.best_avg[i] = m
        if target_reward is not None and episodes[i] >= window and m >= target_reward:
            if books.converged_since[i] is None:
                books.converged_since[i] = int(episodes[i])
            if episodes[i] - books.converged_since[i] >= patience:
                books.converged[i] = True
        else:
            books.converged_since[i] = None


def seed_stop_reason(
    converged: bool, episodes: int, updates: int, max_episodes: int, total_updates: int | None
) -> str:
    """Why a seed stopped: converged, max_episodes, max_env_steps, or running (stopped by the callback)."""
    if converged:
        return "converged"
    if episodes >= max_episodes:
        return "max_episodes"
    if total_updates is not None and updates >= total_updates:
        return "max_env_steps"
    return "running"


def stop_reasons(
    books: Books, episodes: np.ndarray, updates: np.ndarray, max_episodes: int, total_updates: int | None
) -> tuple[str, list[str]]:
    """(the run's stop reason, each seed's)."""
    per_seed = [
        seed_stop_reason(books.converged[i], episodes[i], updates[i], max_episodes, total_updates)
        for i in range(len(books.converged))
    ]
    if books.stopped_by_callback and "running" in per_seed:
        stop_reason = "callback"
    elif all(r == "converged" for r in per_seed):
        stop_reason = "converged"
    else:  # the budget that stopped the seeds that did not converge
        stop_reason = "max_env_steps" if "max_env_steps" in per_seed else "max_episodes"
    return stop_reason, per_seed


def first_non_finite(total_loss: np.ndarray, ran: np.ndarray) -> tuple[int, int] | None:
    """(seed index, update index in the chunk) of the first applied update with a NaN/inf loss, or None;
    a discarded update cannot stop the run."""
    finite = np.isfinite(total_loss) | ~ran
    if finite.all():
        return None
    bad = np.argwhere(~finite)[0]
    return int(bad[0]), int(bad[1])


# ---------------------------------------------------------------------- rows
def masked_mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of ``values`` where ``mask`` (the updates that were applied); None when there are none."""
    picked = np.asarray(values, dtype=float)[mask]
    return float(picked.mean()) if picked.size else None


def build_row(
    books: Books,
    metrics: Any,
    episodes: np.ndarray,
    means: list[float | None],
    seeds: list[int],
    env_steps: int,
    batch: int,
    dt: float,
    wall_s: float,
) -> dict[str, Any]:
    """One history row after a chunk (before its evaluation columns).

    ``metrics`` holds the chunk's per-seed, per-update arrays (``ran``, losses, ``episodes_completed``,
    ``completed_return``); ``episodes`` each seed's episode count after the chunk; ``means`` its window
    means; ``env_steps`` the most env steps of any seed; ``dt`` the chunk's seconds; ``wall_s`` the run's.
    Only the updates that ran count; only the seeds that trained in the chunk get per-seed columns.
    """
    ran = np.asarray(metrics.ran, bool)
    trained = np.asarray(ran.any(axis=1))  # an array (numpy types any() as bool-or-array)
    steps_this_chunk = int(ran.sum()) * batch
    completed = np.where(ran, metrics.episodes_completed, 0).sum(axis=1)
    seed_returns = [
        float(metrics.completed_return[i].sum() / completed[i]) if trained[i] and completed[i] else None
        for i in range(len(seeds))
    ]
    valid_returns = [r for r in seed_returns if r is not None]
    valid_windows = [m for i, m in enumerate(means) if m is not None and trained[i]]
    row: dict[str, Any] = {
        "chunk": books.chunk,
        "update": env_steps // batch,
        "env_steps": env_steps,
        "episodes": int(counted_episodes(episodes, trained).min()),
        "avg_reward": float(np.mean(valid_windows)) if valid_windows else None,
        "episode_return": float(np.mean(valid_returns)) if valid_returns else None,
        **{key: masked_mean(getattr(metrics, field), ran) for key, field in LOSS_FIELDS.items()},
        "env_steps_per_s": steps_this_chunk / dt if dt > 0 else None,
        "converged_seeds": int(sum(books.converged)),
        "wall_s": wall_s,
    }
    for i, seed in enumerate(seeds):
        if trained[i]:
            row[f"episode_return/seed_{seed}"] = seed_returns[i]
            row[f"avg_reward/seed_{seed}"] = means[i]
    return row


def counted_episodes(episodes: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """The episode counts of the seeds still being trained (a frozen seed's count stops moving)."""
    episodes = np.asarray(episodes)
    return episodes[trained] if trained.any() else episodes


# ---------------------------------------------------------------------- evaluations
def due_for_eval(books: Books, episodes: np.ndarray, trained: np.ndarray) -> list[int]:
    """Seeds that trained in this chunk and passed their next evaluation point."""
    return [i for i in range(len(books.next_eval_at)) if trained[i] and episodes[i] >= books.next_eval_at[i]]


def record_eval(
    books: Books,
    row: dict[str, Any],
    eval_metrics: dict[str, Any],
    due: list[int],
    episodes: np.ndarray,
    eval_frequency: int,
    seeds: list[int],
) -> None:
    """Keep a periodic evaluation, move each evaluated seed's next point past its episodes, add the
    evaluation columns to ``row``."""
    books.evals.append(eval_metrics)
    for i in due:
        while books.next_eval_at[i] <= int(episodes[i]):
            books.next_eval_at[i] += eval_frequency
    row["eval/return_mean"] = eval_metrics["avg_reward"]
    row["eval/return_std"] = eval_metrics["std_reward"]
    for i, avg in zip(due, eval_metrics["per_seed_avg"], strict=True):
        row[f"eval/return_mean/seed_{seeds[i]}"] = avg


def callback_info(row: dict[str, Any], eval_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the training callback gets for one row."""
    info: dict[str, Any] = {
        "episode": row["episodes"],
        "env_steps": row["env_steps"],
        "step_metrics": {k: v for k, v in row.items() if "/seed_" not in k},
    }
    if eval_metrics is not None:
        info["eval_metrics"] = {k: v for k, v in eval_metrics.items() if k != "returns"}
    return info


# ---------------------------------------------------------------------- the result
def summary(
    books: Books,
    seeds: list[int],
    episodes: np.ndarray,
    updates: np.ndarray,
    batch: int,
    per_seed: list[str],
    stop_reason: str,
    final_eval: dict[str, Any],
    best: int,
) -> dict[str, Any]:
    """The result's bookkeeping fields (the trainer adds times, the checkpoint folder and the run id)."""
    best_avg = [b for b in books.best_avg if b is not None]
    return {
        "converged": bool(all(books.converged)),
        "converged_seeds": [s for s, c in zip(seeds, books.converged, strict=True) if c],
        "stop_reason": stop_reason,
        "stop_reason_per_seed": per_seed,
        "episodes": int(np.min(episodes)),
        "episodes_per_seed": [int(e) for e in episodes],
        "env_steps": int(np.max(updates)) * batch,
        "env_steps_per_seed": [int(u) * batch for u in updates],
        "best_avg_reward": max(best_avg) if best_avg else None,
        "best_avg_reward_per_seed": books.best_avg,
        "final_eval": final_eval,
        "best_seed": seeds[best],
        "evaluations": books.evals,
    }
