"""Sweep speed benchmark: prints one JSON line.

The shipped sweep (``configs/sweep-cartpole.yaml``: 8 trials x 2 seeds x 150k env steps) run twice by
``ppo sweep`` as a user runs it, each in a fresh process with its own empty ``$PPO_HOME`` (MLflow store,
embedded Prefect API, checkpoints) and a fresh local Ray, the same trials and seeds both times:

* anchor, ``populations: false``: one Ray task per trial (each starts a worker, imports JAX, compiles
  its own program), as the sweep ran before populations;
* ``populations: true`` (the default): trials that differ only in shape-free hyperparameters train as
  one program per group (``ppo/population.py``), one Ray task per group.

Figures: wall seconds from process start to the printed result for each, the speedup, the number of
groups, and each run's best trial with its held-out score (greedy return on episodes that did not choose
it), so the quality of what the faster sweep picks is on the same line. The JAX compilation cache is off
(``PPO_JAX_CACHE=0``) in both, so neither profits from the other's programs.

    python bench/sweep_speed.py [--sweep configs/sweep-cartpole.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import yaml
from _cli import ROOT, timed_ppo  # bench/ is on the path of `python bench/sweep_speed.py`


def run_sweep(sweep: dict, populations: bool, workdir: Path) -> dict:
    """One ``ppo sweep`` in a fresh process and $PPO_HOME; its wall time and JSON result."""
    spec = {**sweep, "populations": populations}
    if spec.get("base") and not Path(spec["base"]).is_absolute():
        spec["base"] = str(ROOT / spec["base"])
    path = workdir / f"sweep-{'populations' if populations else 'per-trial'}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PPO_HOME": str(workdir / path.stem), "PPO_JAX_CACHE": "0"}
    env.pop("RAY_ADDRESS", None)  # a local Ray, started by the flow, for both
    wall, result = timed_ppo(["sweep", "-s", str(path)], env)
    return {"wall_s": wall, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default="configs/sweep-cartpole.yaml")
    args = ap.parse_args()

    sweep = yaml.safe_load((ROOT / args.sweep).read_text())
    from ppo.config import load_config
    from ppo.sweep import group_trials, load_sweep, trial_configs

    spec = load_sweep(ROOT / args.sweep)
    configs = [cfg for _, cfg in trial_configs(spec, root=ROOT)]
    groups = group_trials(configs)
    first = load_config(str(ROOT / spec.base) if spec.base else None, dict(spec.fixed))
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        per_trial = run_sweep(sweep, False, Path(tmp))
        populations = run_sweep(sweep, True, Path(tmp))

    def picked(r: dict) -> dict:
        return {
            "wall_s": round(r["wall_s"], 1),
            "best_trial": r["best_trial"],
            "best_params": r["best_params"],
            "best_score_heldout": round(r["best_score_heldout"], 1),
        }

    print(
        json.dumps(
            {
                "bench": "sweep_speed",
                "sweep": args.sweep,
                "trials": len(configs),
                "seeds": len(first.train.seeds),
                "max_env_steps": first.train.max_env_steps,
                "groups": len(groups),
                "per_trial": picked(per_trial),
                "populations": picked(populations),
                "speedup": round(per_trial["wall_s"] / populations["wall_s"], 2),
                "cpus": os.cpu_count(),
                "jax_cache": "off",
            }
        )
    )


if __name__ == "__main__":
    main()
