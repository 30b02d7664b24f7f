"""Population-based training against a random sweep of the same population: prints one JSON line and
writes both curves to a PNG.

A task where a fixed learning rate struggles: Acrobot-v1 (threshold -100) with the members' learning rates
drawn from a deliberately poor range (default ``[1e-5, 1e-4]``, 10-100x below the shipped 1e-3). The same
``--members`` draws, the same seed, the same budget per member, trained twice as one population program
(``ppo.population.train_together``):

* random sweep: the draws as they are (no member ever changes);
* PBT (``ppo.pbt``): every ``--interval`` updates the worst quarter copy one of the best quarter and
  multiply its learning rate by one of ``--factors`` (default 0.5 or 2.0, so a poor range can be left
  within a run).

Figures: for each, the population's total env steps (all members) when the best member's training return
(mean of its last 50 episodes) first reaches the threshold (null: never), the best member's final
training return, and its greedy return on 100 real gymnasium episodes; PBT's exploit count. Curves (best
member's training return against the population's env steps) go to ``--plot``.

    python bench/pbt_vs_random.py [--members 8] [--steps 1000000] [--low 1e-5 --high 1e-4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(config, rates, pbt_rule, threshold):
    """Train the population (with PBT when ``pbt_rule``): curve, env steps to threshold, best member."""
    from ppo.config import build_config
    from ppo.evaluate import evaluate_gymnasium
    from ppo.pbt import Schedule, fitness
    from ppo.population import train_together
    from ppo.trainer import PPOTrainer

    trainers = [PPOTrainer(config=build_config(config.to_dict(), {"ppo.learning_rate": r})) for r in rates]
    members, seeds = len(rates), len(config.train.seeds)
    window = config.train.convergence_window
    schedule = Schedule(pbt_rule, members, seeds, window) if pbt_rule else None
    curve: list[tuple[int, float]] = []

    def on_chunk(metrics, state):
        steps = int(np.asarray(state.update).sum()) * config.ppo.batch_size
        curve.append((steps, float(np.max(fitness(state, members, seeds, window)))))

    t = time.perf_counter()
    outcomes = train_together(trainers, on_chunk=on_chunk, between=schedule)
    wall = time.perf_counter() - t
    reached = next((steps for steps, best in curve if best >= threshold), None)
    finals = [o["best_avg_reward"] if isinstance(o, dict) else -np.inf for o in outcomes]
    last = np.asarray([fitness(t.state, 1, seeds, window)[0] for t in trainers])
    best = int(np.argmax(last))
    greedy = evaluate_gymnasium(trainers[best].agent.params, config.env.id, 100, seed=7 * 2**28)
    return {
        "env_steps_to_threshold": reached,
        "best_member": best,
        "best_final_training_return": round(float(last[best]), 1),
        "best_greedy_return_100": round(float(np.mean(greedy)), 1),
        "best_ever_window_mean": round(float(np.max(finals)), 1),
        "exploits": 0 if schedule is None else len(schedule.events),
        "wall_s": round(wall, 1),
    }, curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1_000_000, help="env steps per member")
    ap.add_argument("--low", type=float, default=1e-5)
    ap.add_argument("--high", type=float, default=1e-4)
    ap.add_argument("--interval", type=int, default=10, help="updates between exploit steps")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.5, 2.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="pbt_vs_random.png")
    args = ap.parse_args()

    os.environ.setdefault("PPO_HOME", tempfile.mkdtemp(prefix="pbt-bench-"))
    from ppo.config import load_config
    from ppo.pbt import PBT
    from ppo.sharding import configure_cpu_devices

    devices = configure_cpu_devices()
    config = load_config(
        str(ROOT / "configs" / "acrobot.yaml"),
        {
            "train.seeds": [args.seed],
            "train.max_env_steps": args.steps,
            "train.target_reward": 1e9,  # nobody stops early: both populations spend the same budget
            "train.eval_frequency": 10**9,
            "train.checkpoint_every": 0,
            "tracking.enabled": False,
        },
    )
    threshold = -100.0
    rng = np.random.default_rng(args.seed)
    rates = [float(np.exp(rng.uniform(np.log(args.low), np.log(args.high)))) for _ in range(args.members)]
    rule = PBT(args.interval, ("learning_rate",), 0.25, tuple(args.factors), args.seed)
    random_sweep, random_curve = run(config, rates, None, threshold)
    pbt, pbt_curve = run(config, rates, rule, threshold)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in (("random sweep", random_curve), ("PBT", pbt_curve)):
        ax.plot([s for s, _ in curve], [b for _, b in curve], label=name)
    ax.axhline(threshold, color="gray", ls="--", lw=1, label="threshold -100")
    ax.set_xlabel("env steps, all members")
    ax.set_ylabel("best member's training return (last 50 episodes)")
    ax.set_title(f"Acrobot-v1, {args.members} members, learning rate drawn in [{args.low:g}, {args.high:g}]")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(
        json.dumps(
            {
                "bench": "pbt_vs_random",
                "env": "Acrobot-v1",
                "members": args.members,
                "env_steps_per_member": args.steps,
                "learning_rate_range": [args.low, args.high],
                "interval": args.interval,
                "factors": args.factors,
                "threshold": threshold,
                "random": random_sweep,
                "pbt": pbt,
                "plot": args.plot,
                "devices": devices,
            }
        )
    )


if __name__ == "__main__":
    main()
