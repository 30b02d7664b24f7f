"""Scaling benchmark: training throughput (env-steps/s of the bare jitted chunk) against the number of
parallel envs per seed and against the number of seeds trained together. Prints one JSON line and
writes a PNG plot; the "knee" is the first point after which doubling gains < 10%, the peak the best.

    python bench/scale.py [--envs 1,2,...,4096] [--seeds 1,2,...,64] [--num-steps 64] [--out scale.png]

Each point compiles its own program (shapes change), runs one warm-up chunk, then times chunks until
``--min-time`` seconds have passed. PPO work per env-step is the same at every point (``num_steps``
steps per env, 4 minibatches, 4 epochs), so the curve shows how well the device fills up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _powers(top: int) -> str:
    return ",".join(str(2**i) for i in range(top.bit_length()) if 2**i <= top)


def measure(num_envs: int, seeds: int, num_steps: int, min_time: float) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from ppo.config import build_config
    from ppo.trainer import PPOTrainer

    batch = num_envs * num_steps
    cfg = build_config(
        {
            "env": {"num_envs": num_envs},
            "ppo": {"batch_size": batch, "minibatch_size": max(1, batch // 4), "epochs_per_update": 4},
            "train": {
                "seeds": list(range(seeds)),
                "updates_per_chunk": 2,
                "checkpoint_dir": f"bench/scale-ck-{os.getpid()}",
            },
            "tracking": {"enabled": False},
        }
    )
    trainer = PPOTrainer(config=cfg)
    state = trainer.init_state()
    active = jnp.ones(seeds, bool)
    if trainer.sharding is not None:
        active = jax.device_put(active, trainer.sharding.per_seed())
    t = time.perf_counter()
    fn = trainer._chunk_fn(state, active, cfg.train.updates_per_chunk)
    state, metrics = fn(state, active)  # warm-up
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    chunks, t = 0, time.perf_counter()
    while chunks == 0 or time.perf_counter() - t < min_time:
        state, metrics = fn(state, active)
        jax.block_until_ready(metrics)
        chunks += 1
    elapsed = time.perf_counter() - t
    steps = chunks * cfg.train.updates_per_chunk * batch * seeds
    return {
        "num_envs": num_envs,
        "seeds": seeds,
        "env_steps_per_s": round(steps / elapsed),
        "compile_s": round(compile_s, 2),
    }


def knee_and_peak(points: list[dict[str, float]], key: str) -> dict[str, float]:
    best = max(points, key=lambda p: p["env_steps_per_s"])
    knee = points[-1]
    for a, b in zip(points, points[1:], strict=False):
        if b["env_steps_per_s"] < 1.1 * a["env_steps_per_s"]:
            knee = a
            break
    return {
        "knee": knee[key],
        "knee_env_steps_per_s": knee["env_steps_per_s"],
        "peak": best[key],
        "peak_env_steps_per_s": best["env_steps_per_s"],
    }


def plot(envs: list[dict], seeds: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, pts, key, label in (
        (axes[0], envs, "num_envs", "parallel envs per seed (1 seed)"),
        (axes[1], seeds, "seeds", "seeds trained together"),
    ):
        ax.plot([p[key] for p in pts], [p["env_steps_per_s"] for p in pts], "o-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("env-steps/s (jitted PPO chunk)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_title(f"{seeds[0]['num_envs']} envs per seed", fontsize=10)
    fig.suptitle(f"PPO CartPole-v1 throughput on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", default=_powers(4096))
    ap.add_argument("--seeds", default=_powers(64))
    ap.add_argument("--seed-envs", type=int, default=16, help="envs per seed on the seeds axis")
    ap.add_argument("--num-steps", type=int, default=64, help="steps per env per update")
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--out", default="scale.png")
    args = ap.parse_args()

    from ppo.sharding import configure_cpu_devices
    from ppo.trainer import enable_compilation_cache

    configure_cpu_devices()  # before jax.device_count() below starts JAX: one CPU device per core
    enable_compilation_cache()
    import jax

    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    env_points, seed_points = [], []
    for n in (int(x) for x in args.envs.split(",")):
        env_points.append(measure(n, 1, args.num_steps, args.min_time))
        print(json.dumps(env_points[-1]), file=sys.stderr, flush=True)
    for s in (int(x) for x in args.seeds.split(",")):
        seed_points.append(measure(args.seed_envs, s, args.num_steps, args.min_time))
        print(json.dumps(seed_points[-1]), file=sys.stderr, flush=True)
    out = Path(args.out)
    plot(env_points, seed_points, out, device)
    print(
        json.dumps(
            {
                "bench": "scale",
                "device": device,
                "platform": jax.devices()[0].platform,
                "num_steps": args.num_steps,
                "by_num_envs": env_points,
                "by_seeds": seed_points,
                "num_envs_curve": knee_and_peak(env_points, "num_envs"),
                "seeds_curve": knee_and_peak(seed_points, "seeds"),
                "plot": str(out.resolve()),
            }
        )
    )


if __name__ == "__main__":
    main()
