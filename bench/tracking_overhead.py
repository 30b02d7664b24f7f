"""MLflow tracking overhead: the same training with tracking off and on (sqlite store); one JSON line.

Reports the training-loop wall time both ways (compile excluded: the program is built once), the time
spent logging per chunk (batched metrics) as a fraction of the loop, and the two one-off costs: the
run's start (create the run, log the params) and its end (artifacts, model from code, registration).
CartPole now solves in ~0.4 s of training, so the one-offs weigh more than the per-chunk logging;
``--set train.target_reward=1e9`` trains the whole step budget to show the steady state.

    python bench/tracking_overhead.py [--config configs/cartpole.yaml] [--repeats 3] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "cartpole.yaml")
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    os.environ["PPO_HOME"] = tempfile.mkdtemp(prefix="ppo-bench-tracking-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from ppo.config import load_config, parse_overrides
    from ppo.trainer import PPOTrainer

    cfg = load_config(args.config, parse_overrides(args.set))
    PPOTrainer(config=cfg).train()  # compile once, warm everything
    off, on, loop_logging, final_logging, start_logging = [], [], [], [], []
    for _ in range(args.repeats):
        r = PPOTrainer(config=cfg).train()
        off.append(r["history"][-1]["wall_s"])
        t = PPOTrainer(config=cfg, enable_mlflow=True)
        r = t.train()
        on.append(r["history"][-1]["wall_s"])
        loop_logging.append(t.logger.logging_s - t.logger.final_logging_s - t.logger.start_s)
        final_logging.append(t.logger.final_logging_s)
        start_logging.append(t.logger.start_s)
    loop_off, loop_on = statistics.median(off), statistics.median(on)
    print(
        json.dumps(
            {
                "bench": "tracking_overhead",
                "repeats": args.repeats,
                "loop_wall_off_s": round(loop_off, 3),
                "loop_wall_on_s": round(loop_on, 3),
                "loop_overhead": round(loop_on / loop_off - 1, 4),
                "env_steps": r["env_steps"],
                "chunks": len(r["history"]),
                "run_start_s": round(statistics.median(start_logging), 4),
                "logging_in_loop_s": round(statistics.median(loop_logging), 4),
                "logging_in_loop_fraction": round(statistics.median(loop_logging) / loop_on, 4),
                "end_of_run_logging_s": round(statistics.median(final_logging), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
