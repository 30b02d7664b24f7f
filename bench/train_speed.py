"""Training speed benchmark: prints one JSON line.

Figures: import_s (ppo + JAX), compile_s, train_s (jitted chunks only), env_steps, env_steps_per_s,
host_overhead (train() wall over the bare jitted loop for the same chunks, minus 1), time_to_solve_s
(wall from interpreter start until the trained policy scores a greedy mean >= 475 over 100 real
gymnasium episodes for every seed; null if it did not), cache (cold/warm persistent compilation cache).

    python bench/train_speed.py [--seeds N] [--config configs/cartpole.yaml] [--set k=v ...]
    PPO_JAX_CACHE=0 python bench/train_speed.py    # cold compile
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _process_age() -> float:
    """Seconds since this process started (includes interpreter start-up): /proc/uptime minus the
    process's start time, both counted from boot in 10 ms ticks (btime would add up to 1 s of error)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - T0


START_AGE = _process_age() - (time.perf_counter() - T0)  # interpreter start-up before line 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml")
    )
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--no-overhead", action="store_true", help="skip the bare-loop comparison")
    args = ap.parse_args()

    import jax

    from ppo.config import load_config, parse_overrides
    from ppo.sharding import configure_cpu_devices
    from ppo.trainer import PPOTrainer, enable_compilation_cache

    configure_cpu_devices()  # before JAX starts: one CPU device per core
    cache_dir = enable_compilation_cache()
    cache = "off" if cache_dir is None else ("warm" if any(cache_dir.iterdir()) else "cold")
    overrides = parse_overrides(args.set)
    overrides["train.seeds"] = list(range(args.seeds))
    overrides["tracking.enabled"] = False
    overrides.setdefault("train.checkpoint_dir", f"bench/ck-{os.getpid()}")  # inside $PPO_HOME
    cfg = load_config(args.config, overrides)
    import_s = time.perf_counter() - T0

    trainer = PPOTrainer(config=cfg)
    result = trainer.train()
    if cfg.train.eval_episodes >= args.episodes:  # train() ends with this very test: greedy, gymnasium
        out = result["final_eval"]
    else:
        out = trainer.evaluate(num_episodes=args.episodes, all_seeds=True, seed=123)
    solved = min(out["per_seed_avg"]) >= 475
    solve_wall = START_AGE + time.perf_counter() - T0

    overhead = None
    if not args.no_overhead:
        # the same chunks, the same compiled program, no host work: the floor the host loop is compared to
        state = trainer.init_state()
        active = jax.numpy.ones(len(cfg.train.seeds), bool)
        fn = trainer._chunk_fn(state, active, cfg.train.updates_per_chunk)
        n_chunks = len(result["history"])
        t = time.perf_counter()
        for _ in range(n_chunks):
            state, metrics = fn(state, active)
            jax.block_until_ready(metrics)
        bare = time.perf_counter() - t
        hosted = result["history"][-1]["wall_s"] - result["history"][0]["wall_s"]
        bare_per_chunk = bare / n_chunks
        overhead = hosted / (bare_per_chunk * (n_chunks - 1)) - 1 if n_chunks > 1 else None
        import shutil

        shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)

    print(
        json.dumps(
            {
                "bench": "train_speed",
                "env": cfg.env.id,
                "seeds": len(cfg.train.seeds),
                "num_envs": cfg.env.num_envs,
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "platform": jax.devices()[0].platform,
                "cache": cache,
                "interpreter_s": round(START_AGE, 3),
                "import_s": round(import_s, 3),
                "compile_s": round(result["compile_s"], 3),
                "init_s": round(trainer.timings.get("init_s", 0.0), 3),
                "train_s": round(result["train_time_s"], 3),
                "env_steps": result["env_steps"],
                "env_steps_per_s": round(result["env_steps_per_s"] or 0.0),
                "host_overhead": None if overhead is None else round(overhead, 4),
                "train_wall_s": round(result["wall_time_s"], 3),
                "eval_avg_per_seed": [round(x, 1) for x in out["per_seed_avg"]],
                "solved_all": bool(solved),
                "time_to_solve_s": round(solve_wall, 3) if solved else None,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
