"""One SB3 PPO run with the RL Zoo's tuned hyperparameters, timed like bench/zoo.py times ours.

Run by the SB3 venv's python (``bench/zoo.py --sb3-python ...`` starts it; see that file's docstring for
how the venv is built); it never imports ``ppo``. The run is set up by ``rl_zoo3``'s own
``ExperimentManager`` (the object ``python -m rl_zoo3.train --algo ppo --env ENV`` uses), so the
hyperparameters come from the installed ``rl_zoo3/hyperparams/ppo.yml`` and are processed exactly as the
zoo does: ``lin_`` schedules, ``normalize`` -> ``VecNormalize`` with the env's gamma, ``n_envs``,
``policy_kwargs``, Monitor wrappers, ``DummyVecEnv``. The zoo's own evaluation callback is off
(``eval_freq=-1``); ours replaces it.

Checks: at the first rollout start at or after each multiple of ``--check-every`` env steps (the policy
has then been trained on every step counted) and once after ``learn`` returns, the greedy policy (the
mean action, clipped to the bounds by ``model.predict``; observations normalised with the frozen
``VecNormalize`` statistics) plays ``--episodes`` real gymnasium episodes side by side, episode ``j``
from ``gymnasium.make(env).reset(seed=<check seed> + j)``. The check seed is
``--eval-seed + (steps // check_every) * episodes``, the same rule bench/zoo.py uses for ours, so both
systems face the same start states at the same step bucket. The checks' time is measured and taken out
of ``wall_s``.

Output (stdout): one JSON line ``{"event": "check", ...}`` per check and a last ``{"event": "result",
...}``; the zoo's own prints go to stderr. Exit 3 (with a ``{"event": "skip"}`` line) when the zoo has no
tuned PPO entry for the env.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

STDOUT = sys.stdout  # the zoo's prints are redirected to stderr while it runs; the JSON lines are not


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout (flushed: bench/zoo.py reads it as it comes)."""
    STDOUT.write(json.dumps(record) + "\n")
    STDOUT.flush()


def zoo_entry(env_id: str) -> dict[str, Any] | None:
    """The env's block of the installed rl_zoo3 ppo.yml, or None if the zoo has no tuned entry for it
    (its ``default``/``atari`` fallbacks are not tuned for the env, so they are no fair baseline)."""
    from pathlib import Path

    import rl_zoo3
    import yaml

    path = Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo.yml"
    with open(path) as f:
        table = yaml.load(f, Loader=yaml.UnsafeLoader)  # the zoo's own loader (!!float tags)
    return table.get(env_id)


def greedy_returns(model: Any, env_id: str, episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` greedy episodes, played side by side (one batched forward pass
    per step); episode ``j`` starts from ``gymnasium.make(env_id).reset(seed=seed + j)``."""
    import gymnasium as gym
    import numpy as np

    vec_norm = model.get_vec_normalize_env()
    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + j)[0] for j, e in enumerate(envs)])
    returns = np.zeros(episodes)
    alive = np.ones(episodes, bool)
    while alive.any():
        x = vec_norm.normalize_obs(obs) if vec_norm is not None else obs  # frozen statistics
        actions, _ = model.predict(x, deterministic=True)
        for j in np.flatnonzero(alive):
            o, r, term, trunc, _ = envs[j].step(actions[j])
            obs[j] = o
            returns[j] += float(r)
            alive[j] = not (term or trunc)
    for e in envs:
        e.close()
    return returns.tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", required=True, help="gymnasium id, e.g. CartPole-v1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=0, help="env steps (0: the zoo's n_timesteps)")
    ap.add_argument("--check-every", type=int, default=20_000)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--eval-seed", type=int, default=10_000_000)
    ap.add_argument("--final-seed", type=int, default=20_000_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as the zoo)")
    ap.add_argument("--stop-at-threshold", action="store_true", help="stop learning once a check reached it")
    a = ap.parse_args()

    import numpy as np
    import rl_zoo3
    import stable_baselines3
    import torch
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.callbacks import BaseCallback

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    entry = zoo_entry(a.env)
    if entry is None:
        emit(
            {
                "event": "skip",
                "reason": f"rl_zoo3 {rl_zoo3.__version__} ppo.yml has no tuned entry for {a.env}",
            }
        )
        sys.exit(3)
    import_s = time.perf_counter() - T0

    checks: list[dict[str, Any]] = []
    state: dict[str, Any] = {"check_s": 0.0, "next": a.check_every, "reached": None, "t0": 0.0}

    def check(model: Any, steps: int) -> None:
        """Evaluate now (its time is excluded from wall_s); record when the threshold is first reached."""
        t = time.perf_counter()
        wall = t - state["t0"] - state["check_s"]
        seed = a.eval_seed + (steps // a.check_every) * a.episodes
        ret = greedy_returns(model, a.env, a.episodes, seed)
        mean = float(np.mean(ret))
        row = {"event": "check", "steps": steps, "wall_s": round(wall, 3), "mean": round(mean, 2)}
        if mean >= a.threshold and state["reached"] is None:
            state["reached"] = {"steps": steps, "wall_s": wall}
        state["check_s"] += time.perf_counter() - t
        row["check_s"] = round(time.perf_counter() - t, 3)
        checks.append(row)
        emit(row)

    class Checks(BaseCallback):
        """Checks at rollout starts: the policy has then been trained on every step counted so far."""

        def _on_rollout_start(self) -> None:
            steps = int(self.model.num_timesteps)
            if steps >= state["next"]:
                check(self.model, steps)
                state["next"] = (steps // a.check_every + 1) * a.check_every

        def _on_step(self) -> bool:
            # --stop-at-threshold: SB3 stops learn() when a callback's _on_step returns False
            return not (a.stop_at_threshold and state["reached"] is not None)

    log_dir = tempfile.mkdtemp(prefix="zoo-sb3-")
    state["t0"] = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the zoo prints its settings; stdout is for JSON
        manager = ExperimentManager(
            argparse.Namespace(algo="ppo", env=a.env, seed=a.seed),
            "ppo",
            a.env,
            log_dir,
            n_timesteps=a.budget,
            eval_freq=-1,
            seed=a.seed,
            log_interval=-1,
            verbose=0,
            device="cpu",
        )
        model, saved = manager.setup_experiment()
        setup_s = time.perf_counter() - state["t0"]
        model.learn(manager.n_timesteps, callback=Checks())
    steps = int(model.num_timesteps)
    train_wall = time.perf_counter() - state["t0"] - state["check_s"]
    if state["reached"] is None and (not checks or checks[-1]["steps"] != steps):
        check(model, steps)  # the end of the budget counts as a check
    final = greedy_returns(model, a.env, a.episodes, a.final_seed)
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)  # the zoo's monitor files and saved config
    reached = state["reached"]
    emit(
        {
            "event": "result",
            "steps_to_threshold": None if reached is None else reached["steps"],
            "wall_s_to_threshold": None if reached is None else round(reached["wall_s"], 3),
            "final_mean": round(float(np.mean(final)), 2),
            "final_min": round(float(np.min(final)), 2),
            "budget": int(manager.n_timesteps),
            "env_steps": steps,
            "train_wall_s": round(train_wall, 3),
            "setup_s": round(setup_s, 3),
            "import_s": round(import_s, 3),
            "check_s": round(state["check_s"], 3),
            "checks": len(checks),
            "hyperparams": {k: str(v) for k, v in saved.items()},
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "sb3": stable_baselines3.__version__,
            "rl_zoo3": rl_zoo3.__version__,
            "cpu_count": os.cpu_count(),
        }
    )


if __name__ == "__main__":
    main()
