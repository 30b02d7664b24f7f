"""Population speed benchmark: prints one JSON line.

A population of ``--members`` CartPole configs (learning rate, clip epsilon, GAE lambda and entropy
coefficient drawn from the shipped sweep's ranges, seeds ``--seeds``) trains ``--steps`` env steps per
row as ONE program (ppo/population.py), against the anchor measured in the same run: the first
``--anchor`` of the same members trained one after another, each its own PPOTrainer (what a trial per
task does, without the process and MLflow overhead a Ray task adds, so the anchor is the generous one).

Figures: members, seeds, rows, env_steps_per_row, population wall_s / compile_s / env_steps_per_s (all
rows' env steps per second of the wall time less the compile: initialisation, bookkeeping and the final
evaluations count) / train_s and train_env_steps_per_s (inside the compiled chunks only: the program's
own throughput, as train_speed.py reports it for seeds), anchor_wall_s per member (compile included, as
each trial pays it), speedup (anchor wall per member x members / population wall), devices.

    python bench/population_speed.py [--members 64] [--seeds 1] [--steps 150000] [--anchor 4]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=150_000)
    ap.add_argument("--anchor", type=int, default=4, help="members trained one by one for the anchor")
    ap.add_argument("--config", default="configs/cartpole.yaml")
    args = ap.parse_args()

    import numpy as np

    from ppo.config import load_config
    from ppo.population import member_config, train_population
    from ppo.sharding import configure_cpu_devices

    devices = configure_cpu_devices()
    rng = np.random.default_rng(0)
    members = [
        {
            "ppo.learning_rate": float(np.exp(rng.uniform(np.log(1e-3), np.log(1e-2)))),
            "ppo.clip_epsilon": float(rng.uniform(0.1, 0.3)),
            "ppo.gae_lambda": float(rng.choice([0.9, 0.95, 0.98])),
            "ppo.entropy_coef": float(rng.choice([0.0, 0.01])),
        }
        for _ in range(args.members)
    ]
    # every member trains its whole budget: no target to stop at
    config = load_config(
        args.config,
        {
            "train.max_env_steps": args.steps,
            "train.seeds": list(range(args.seeds)),
            "train.target_reward": 1e9,
            "tracking.enabled": False,
        },
    )
    result = train_population(config, members)
    final = result.final_return()

    from ppo.trainer import PPOTrainer

    anchor = []
    for member in members[: args.anchor]:
        t = time.perf_counter()
        PPOTrainer(config=member_config(config, member)).train()
        anchor.append(time.perf_counter() - t)
    per_member = float(np.mean(anchor))
    print(
        json.dumps(
            {
                "bench": "population_speed",
                "members": args.members,
                "seeds": args.seeds,
                "rows": args.members * args.seeds,
                "env_steps_per_row": result.env_steps,
                "devices": devices,
                "population_wall_s": round(result.wall_s, 2),
                "population_compile_s": round(result.compile_s, 2),
                "population_env_steps_per_s": round(result.env_steps_per_s),
                "population_train_s": round(result.train_s, 2),
                "population_train_env_steps_per_s": round(result.train_env_steps_per_s),
                "members_final_return_median": round(float(np.nanmedian(final)), 1),
                "anchor_members": len(anchor),
                "anchor_wall_s_per_member": round(per_member, 2),
                "anchor_env_steps_per_s": round(result.env_steps * args.seeds / per_member),
                "speedup": round(per_member * args.members / result.wall_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
