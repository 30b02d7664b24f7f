"""Ours vs Stable-Baselines3 PPO with the RL Zoo's tuned hyperparameters, per shipped config (issue 13).

For each shipped config (``--envs cartpole,pendulum,...``; default every one of :data:`CONFIGS` that
exists in configs/) and each seed (``--seeds N``, default 3), three systems train in fresh processes, one
after another, on this machine:

* ``ours``: the project's trainer, ``PPOTrainer.from_config(configs/<env>.yaml, enable_mlflow=False,
  train.seeds=[s])``, one seed per process (like SB3: the like-for-like comparison).
* ``ours-together``: the same config with all seeds in one program (how our configs are meant to train:
  the seeds share the compiled program and the cores). Each seed's time to threshold is the joint run's
  wall time until *that* seed reached it, so it includes training the other seeds alongside.
* ``sb3``: SB3 PPO set up by ``rl_zoo3``'s own ``ExperimentManager`` from the installed
  ``rl_zoo3/hyperparams/ppo.yml`` (``lin_`` schedules, ``normalize`` -> VecNormalize with the env's gamma,
  ``n_envs``, ``policy_kwargs``, gSDE where the zoo says so): bench/zoo_sb3_runner.py, run by the SB3
  venv's python (``--sb3-python``, default ``$SB3_PYTHON``; without it SB3 is skipped with a message and
  ours is still measured). Envs without a tuned zoo entry (the MinAtar games) have no SB3 row.

Budgets: ours trains its config's ``train.max_env_steps`` (and stops earlier where the config's
convergence rule says so, as it does in the pipeline); SB3 trains the zoo's ``n_timesteps``.
``--budget N`` replaces both (``--quick``). Our config's own periodic evaluation is switched off
(``train.eval_frequency`` 1e9): the checks below replace it for both systems.

Checks, the same for both systems: whenever a system's env steps pass the next multiple of
``--check-every`` (default 20,000; ours: at the end of a chunk, so a shipped chunk over 1.5x that is
shortened to fit, e.g. Pendulum's 20 x 2048 steps to 9 x 2048, which changes only how often the host
looks, not the learning; SB3: at the start of the next rollout, after the update), the greedy policy plays
``--episodes`` (100) real gymnasium episodes; the seed of episode ``j`` is ``10,000,000 + (steps //
check_every) * episodes + j``, so both systems face the same start states at the same step bucket. The
end of the budget is a check too. "Reached" = the mean return >= the env's threshold (``ppo.envs``'s
table: CartPole 475, Acrobot -100, MountainCar-v0 -110, MountainCarContinuous-v0 90, Pendulum-v1 -200,
LunarLander-v3 200, Breakout-MinAtar 28). Wall time runs from the start of the system's setup (ours:
building the trainer, JAX compile included, cold: no persistent compilation cache unless ``--jax-cache
DIR``; SB3: the zoo building envs and model) to the check, with the checks' own time taken out, for both;
interpreter start and imports are reported apart (``import_s``) and not counted. The final score is a
further 100-episode greedy evaluation (seeds from 20,000,000) after the budget, of every seed
(``--stop-at-threshold``: a run stops at the check where its seeds reached the threshold, for both
systems; the final score is then that policy's, and the budget column is an upper bound). Our
trainer's own final evaluation after the last chunk is not counted either (its wall ends at the last
chunk).

Threads: ours is JAX on CPU with the project's default layout (``ppo.sharding.configure_cpu_devices``:
one XLA CPU device per core, seeds sharded over them; each row reports ``jax_devices``). SB3 runs
``torch.set_num_threads(1)`` by default (``--sb3-threads``; 0 = torch's default, every physical core,
which is what ``rl_zoo3.train`` leaves it at): for the zoo's 64x64 MLPs one thread is SB3's faster
setting here (measured: CartPole, 3,000 steps, 6.7 s with 1 thread vs 46.8 s with torch's default 2, on
this 2-core machine under load), so SB3 gets its best setting, not ours. SB3's way to use the other core
is a second seed at the same time: ``--sb3-jobs 2`` trains that many seeds at once, one process each (the
counterpart of ours-together; each row says ``sb3_jobs``). Each row reports the thread/device settings
it ran with. Nothing else should run on the machine meanwhile: both systems are timed on the same,
otherwise idle, cores.

The SB3 venv (commands as used for /tmp/research/sb3-venv; torch first, so no CUDA build is pulled in)::

    python3 -m venv sb3-venv
    sb3-venv/bin/pip install torch==2.13.0          # the CPU build on this machine
    sb3-venv/bin/pip install 'stable-baselines3>=2,<3' rl_zoo3 'gymnasium==1.3.0'
    sb3-venv/bin/pip install 'gymnasium[box2d]==1.3.0'   # for LunarLander-v3
    # (MinAtar needs no package there: the zoo has no tuned PPO for it, so SB3 is skipped)

Usage::

    SB3_PYTHON=sb3-venv/bin/python python bench/zoo.py [--envs cartpole,pendulum] [--seeds 3] > zoo.jsonl
    python bench/zoo.py --quick --sb3-python sb3-venv/bin/python     # < 3 minutes: checks the script
    python bench/zoo.py --markdown-from zoo.jsonl                    # the README table from saved lines

Output: one JSON line per (env, system, seed) (``"bench": "zoo"``), then one summary line per env
(``"summary": true``) with each system's medians over seeds and ``speedup_wall`` = SB3's median wall
seconds to threshold / ours' (and ``speedup_wall_together`` for ours-together); ``--markdown`` prints the
README table at the end (on stdout, after the JSON lines).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "zoo_sb3_runner.py"
#: shipped configs, in table order (those missing from configs/ are left out of the default set)
CONFIGS = (
    "cartpole",
    "acrobot",
    "mountaincar",
    "mountaincar-continuous",
    "pendulum",
    "lunarlander",
    "breakout-minatar",
)
#: issue 13's targets, used only where ppo.envs has no threshold for the env
ISSUE_THRESHOLDS = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "MountainCar-v0": -110.0,
    "MountainCarContinuous-v0": 90.0,
    "Pendulum-v1": -200.0,
    "LunarLander-v3": 200.0,
    "Breakout-MinAtar": 28.0,
}
EVAL_SEED = 10_000_000  # checks: EVAL_SEED + (steps // check_every) * episodes + j
FINAL_SEED = 20_000_000  # the final score's episodes


def emit(record: dict[str, Any], stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(record) + "\n")
    stream.flush()


def check_seed(steps: int, check_every: int, episodes: int) -> int:
    """The first gymnasium seed of the check at ``steps`` (same rule in bench/zoo_sb3_runner.py)."""
    return EVAL_SEED + (steps // check_every) * episodes


# ---------------------------------------------------------------------------------------------- ours
def ours_worker(a: argparse.Namespace) -> None:
    """Train one config (the seeds in ``--worker-seeds``) in this process and print JSON lines: one per
    check (``event: check``) and one ``event: result`` with a row per seed."""
    import jax
    import numpy as np

    from ppo.config import load_config
    from ppo.evaluate import evaluate_params_list
    from ppo.trainer import PPOTrainer

    if a.jax_cache:
        from ppo.runtime import enable_compilation_cache

        os.environ["PPO_JAX_CACHE"] = a.jax_cache
        enable_compilation_cache()
    import_s = time.perf_counter() - T0
    seeds = [int(s) for s in a.worker_seeds.split(",")]
    base = load_config(a.worker_config)
    overrides: dict[str, Any] = {
        "train.seeds": seeds,
        "train.eval_frequency": 10**9,  # the checks below replace the config's periodic evaluation
        "train.log_frequency": 1,  # the callback after every chunk
        "tracking.enabled": False,
    }
    if a.budget:
        overrides["train.max_env_steps"] = a.budget
    batch = base.ppo.batch_size
    if base.train.updates_per_chunk * batch > 1.5 * a.check_every:  # keep the check cadence close
        overrides["train.updates_per_chunk"] = max(1, a.check_every // batch)
    env_id = base.env.id
    n = len(seeds)
    reached: list[dict[str, Any] | None] = [None] * n
    book: dict[str, Any] = {"check_s": 0.0, "next": a.check_every, "checks": 0, "last_chunk": 0.0}
    latest: dict[str, Any] = {}

    class Tapped(PPOTrainer):
        """The project's trainer, unchanged, except that the state each chunk returns is kept where the
        callback can read it (the callback itself gets only the chunk's row)."""

        @property
        def runtime(self) -> Any:
            return _Tap(super().runtime, latest)

    def check(params: list[Any], steps_per_seed: list[int], steps: int, wall: float) -> None:
        t = time.perf_counter()
        pending = [i for i in range(n) if reached[i] is None]
        seed = check_seed(steps, a.check_every, a.episodes)
        returns = evaluate_params_list(
            [params[i] for i in pending], env_id, a.episodes, seed, trainer.config.env.max_steps_per_episode
        )
        means = {}
        for i, r in zip(pending, returns, strict=True):
            means[seeds[i]] = round(float(np.mean(r)), 2)
            if float(np.mean(r)) >= a.threshold:
                reached[i] = {"steps": steps_per_seed[i], "wall_s": wall}
        book["checks"] += 1
        book["last_check_steps"] = steps
        dt = time.perf_counter() - t
        book["check_s"] += dt
        emit(
            {
                "event": "check",
                "steps": steps,
                "wall_s": round(wall, 3),
                "mean": means,
                "check_s": round(dt, 3),
            }
        )

    def callback(info: dict[str, Any]) -> bool:
        t = time.perf_counter()
        book["last_chunk"] = t - t0 - book["check_s"]
        steps = int(info["env_steps"])
        if steps >= book["next"] and any(r is None for r in reached):
            state = latest.get("state")
            if state is None:
                raise RuntimeError(
                    "bench/zoo.py reads each chunk's state through Runtime.chunk_fn; this trainer's chunks "
                    "did not go through it, so the checks cannot see the policy"
                )
            steps_per_seed = [int(u) * batch for u in np.asarray(jax.device_get(state.update))]
            split_t = time.perf_counter()
            params = trainer._split_seeds(state)
            book["check_s"] += time.perf_counter() - split_t
            check(params, steps_per_seed, steps, book["last_chunk"])
        book["next"] = (steps // a.check_every + 1) * a.check_every
        # --stop-at-threshold: once every seed has reached it, the rest of the budget measures nothing
        return not (a.stop_at_threshold and all(r is not None for r in reached))

    t0 = time.perf_counter()
    trainer = Tapped.from_config(a.worker_config, enable_mlflow=False, **overrides)
    result = trainer.train(callback=callback)
    train_wall = book["last_chunk"]
    params = trainer.seed_params
    updates = np.asarray(jax.device_get(trainer.state.update))
    steps_per_seed = [int(u) * batch for u in updates]
    last = max(steps_per_seed)
    if any(r is None for r in reached) and book.get("last_check_steps") != last:
        check(params, steps_per_seed, last, train_wall)  # the end of the budget counts as a check
    final = evaluate_params_list(
        params, env_id, a.episodes, FINAL_SEED, trainer.config.env.max_steps_per_episode
    )
    rows = []
    for i, s in enumerate(seeds):
        r = reached[i]
        rows.append(
            {
                "seed": s,
                "steps_to_threshold": None if r is None else r["steps"],
                "wall_s_to_threshold": None if r is None else round(r["wall_s"], 3),
                "final_mean": round(float(np.mean(final[i])), 2),
                "final_min": round(float(np.min(final[i])), 2),
                "env_steps": steps_per_seed[i],
                "stop_reason": result["stop_reason_per_seed"][i],
            }
        )
    emit(
        {
            "event": "result",
            "seeds": rows,
            "budget": trainer.config.train.max_env_steps,
            "train_wall_s": round(train_wall, 3),
            "compile_s": round(result.get("compile_s", 0.0), 3),
            "import_s": round(import_s, 3),
            "check_s": round(book["check_s"], 3),
            "checks": book["checks"],
            "updates_per_chunk": trainer.config.train.updates_per_chunk,
            "jax": jax.__version__,
            "jax_devices": jax.device_count(),
            "jax_cache": a.jax_cache or "off",
            "cpu_count": os.cpu_count(),
        }
    )


class _Tap:
    """A :class:`ppo.runtime.Runtime` whose chunk functions also store the state they return."""

    def __init__(self, runtime: Any, latest: dict[str, Any]) -> None:
        self._runtime, self._latest = runtime, latest

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def chunk_fn(self, state: Any, active: Any, num_updates: int) -> Any:
        fn = self._runtime.chunk_fn(state, active, num_updates)

        def run(state: Any, active: Any) -> Any:
            out = fn(state, active)
            self._latest["state"] = out[0]
            return out

        return run


# ------------------------------------------------------------------------------------ orchestration
def run_lines(
    label: str, cmd: list[str], env: dict[str, str], timeout: float | None
) -> tuple[int, list[dict[str, Any]]]:
    """Run ``cmd`` (killed after ``timeout`` seconds); echo its check lines to stderr as they come, tagged
    with ``label``; return its exit code and its JSON lines."""
    import threading

    out: list[dict[str, Any]] = []
    errors: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as p:
        assert p.stdout is not None and p.stderr is not None
        drain = threading.Thread(target=lambda: errors.extend(p.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        timer = threading.Timer(timeout, p.kill) if timeout else None
        if timer is not None:
            timer.start()
        for line in p.stdout:
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append(rec)
            if rec.get("event") == "check":
                emit({"progress": label, **rec}, sys.stderr)
        code = p.wait()
        if timer is not None:
            timer.cancel()
        drain.join(timeout=5)
    if code not in (0, 3):
        sys.stderr.write(f"zoo: {label} exited {code}; its last stderr lines:\n" + "".join(errors[-30:]))
    return code, out


def env_threshold(env_id: str) -> float:
    """The env's threshold from ppo.envs's table (the gate's default), else issue 13's figure."""
    try:
        from ppo.envs import env_spec

        found = env_spec(env_id).reward_threshold()
        if found is not None:
            return float(found)
    except ValueError:
        pass
    return ISSUE_THRESHOLDS[env_id]


def median_or_none(values: list[float | None]) -> float | None:
    """The median over seeds, counting a seed that never reached the threshold as infinitely slow
    (None when at least half did not reach it)."""
    if not values:
        return None
    xs = sorted(float("inf") if v is None else float(v) for v in values)
    m = statistics.median(xs)
    return None if m == float("inf") else round(m, 3)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def summarize(env: str, env_id: str, threshold: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "zoo",
        "summary": True,
        "env": env,
        "env_id": env_id,
        "threshold": threshold,
    }
    walls: dict[str, float | None] = {}
    for system in ("ours", "ours-together", "sb3"):
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        walls[system] = median_or_none([r["wall_s_to_threshold"] for r in mine])
        out[system] = {
            "seeds": len(mine),
            "reached": sum(r["steps_to_threshold"] is not None for r in mine),
            "median_steps_to_threshold": median_or_none([r["steps_to_threshold"] for r in mine]),
            "median_wall_s_to_threshold": walls[system],
            "median_final_mean": round(statistics.median(r["final_mean"] for r in mine), 2),
            "budget": mine[0]["budget"],
        }
    sb3 = walls.get("sb3")
    for system, key in (("ours", "speedup_wall"), ("ours-together", "speedup_wall_together")):
        mine_wall = walls.get(system)
        out[key] = round(sb3 / mine_wall, 2) if sb3 and mine_wall else None
    return out


def markdown(rows: list[dict[str, Any]], summaries: list[dict[str, Any]], header: str) -> str:
    """The README table: one line per (env, system), medians over seeds."""

    episodes = rows[0]["episodes"] if rows else 100

    def fmt(x: float | None, digits: int = 1) -> str:
        return "not reached" if x is None else f"{x:,.{digits}f}"

    lines = [
        header,
        "",
        "| env | threshold | system | seeds reached | median steps to threshold | median wall s to threshold "
        f"| median final greedy ({episodes} ep) | budget (steps) | SB3 / ours wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for system, label, ratio in (
            ("ours", "ours, 1 seed per process", s.get("speedup_wall")),
            ("ours-together", "ours, seeds in one program", s.get("speedup_wall_together")),
            ("sb3", "SB3 + RL Zoo", None),
        ):
            if system not in s:
                continue
            d = s[system]
            lines.append(
                f"| {s['env_id']} | {s['threshold']:g} | {label} | {d['reached']}/{d['seeds']} "
                f"| {fmt(d['median_steps_to_threshold'], 0)} | {fmt(d['median_wall_s_to_threshold'])} "
                f"| {d['median_final_mean']:.1f} | {d['budget']:,} | "
                f"{'' if ratio is None else f'{ratio:.1f}x'} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envs", default="", help="config names, comma-separated (default: all that exist)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sb3-python", default=os.environ.get("SB3_PYTHON", ""))
    ap.add_argument(
        "--sb3-threads", type=int, default=1, help="torch threads per SB3 process (0: torch's default)"
    )
    ap.add_argument("--sb3-jobs", type=int, default=1, help="SB3 seeds trained at once (one process each)")
    ap.add_argument("--check-every", type=int, default=20_000, help="env steps between greedy checks")
    ap.add_argument("--episodes", type=int, default=100, help="greedy episodes per check and at the end")
    ap.add_argument("--budget", type=int, default=0, help="env steps for both systems (0: their own)")
    ap.add_argument(
        "--systems", default="ours,ours-together,sb3", help="which of ours, ours-together, sb3 to run"
    )
    ap.add_argument("--jax-cache", default="", help="a persistent compilation cache folder (default: cold)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run before it is killed")
    ap.add_argument(
        "--stop-at-threshold",
        action="store_true",
        help="stop a run once its seeds reached the threshold (the final score is then that policy's)",
    )
    ap.add_argument("--quick", action="store_true", help="cartpole+pendulum, 1 seed, tiny budgets")
    ap.add_argument("--markdown", action="store_true", help="print the README table at the end")
    ap.add_argument("--markdown-from", default="", help="print the table from a saved JSON-lines file")
    ap.add_argument("--worker-config", default="", help=argparse.SUPPRESS)
    ap.add_argument("--worker-seeds", default="", help=argparse.SUPPRESS)
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="replace every env's threshold (e.g. to check the script)",
    )
    a = ap.parse_args()

    if a.worker_config:
        ours_worker(a)
        return
    if a.markdown_from:
        lines = [json.loads(x) for x in Path(a.markdown_from).read_text().splitlines() if x.startswith("{")]
        rows = [r for r in lines if r.get("bench") == "zoo" and not r.get("summary")]
        summaries = [r for r in lines if r.get("summary")]
        when = rows[0].get("date", "") if rows else ""
        where = rows[0].get("machine", "") if rows else ""
        print(markdown(rows, summaries, f"bench/zoo.py, {when}, {where}"))
        return
    if a.quick:
        a.envs = a.envs or "cartpole,pendulum"
        a.seeds, a.budget = 1, a.budget or 5_000
        a.check_every, a.episodes = 2_500, 20

    import yaml

    names = [e for e in a.envs.split(",") if e] or [
        c for c in CONFIGS if (ROOT / "configs" / f"{c}.yaml").is_file()
    ]
    systems = [s for s in a.systems.split(",") if s]
    if a.seeds == 1 and "ours-together" in systems:
        systems.remove("ours-together")  # one seed: the same program as "ours"
    sb3_python = a.sb3_python
    if "sb3" in systems and not sb3_python:
        sys.stderr.write(
            "zoo: no SB3 python (--sb3-python or $SB3_PYTHON): SB3 is skipped, only ours is measured; "
            "see this file's docstring for how to build the venv\n"
        )
        systems.remove("sb3")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = machine()
    home = tempfile.mkdtemp(prefix="zoo-ppo-home-")
    ours_env = {**os.environ, "PPO_HOME": home, "PYTHONPATH": str(ROOT)}
    ours_env.pop("MLFLOW_TRACKING_URI", None)
    # cold means cold for every run: the trainer would otherwise keep JAX's persistent compilation cache in
    # the shared $PPO_HOME, and every run after an env's first would find its programs compiled
    ours_env["PPO_JAX_CACHE"] = a.jax_cache or "0"
    all_rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for name in names:
        path = ROOT / "configs" / f"{name}.yaml"
        if not path.is_file():
            emit({"bench": "zoo", "env": name, "error": f"no config {path}"})
            continue
        env_id = yaml.safe_load(path.read_text())["env"]["id"]
        threshold = env_threshold(env_id) if a.threshold is None else a.threshold
        common = {"bench": "zoo", "env": name, "env_id": env_id, "threshold": threshold}
        common.update(date=stamp, machine=where, check_every=a.check_every, episodes=a.episodes)
        common.update(stop_at_threshold=a.stop_at_threshold)
        rows: list[dict[str, Any]] = []
        ours_base = [sys.executable, str(Path(__file__).resolve()), "--worker-config", str(path)]
        ours_base += ["--check-every", str(a.check_every), "--episodes", str(a.episodes)]
        ours_base += ["--threshold", str(threshold), "--budget", str(a.budget), "--jax-cache", a.jax_cache]
        ours_base += ["--stop-at-threshold"] if a.stop_at_threshold else []
        runs: list[tuple[str, list[int]]] = []
        if "ours" in systems:
            runs += [("ours", [s]) for s in range(a.seeds)]
        if "ours-together" in systems:
            runs.append(("ours-together", list(range(a.seeds))))
        for system, seeds in runs:
            cmd = ours_base + ["--worker-seeds", ",".join(map(str, seeds))]
            code, lines = run_lines(f"{name} {system} seeds={seeds}", cmd, ours_env, a.timeout)
            result = next((x for x in lines if x.get("event") == "result"), None)
            if result is None:
                emit({**common, "system": system, "seeds": seeds, "error": f"exit {code}, no result"})
                continue
            shared = {k: v for k, v in result.items() if k not in ("event", "seeds")}
            for seed_row in result["seeds"]:
                row = {**common, "system": system, **seed_row, **shared}
                rows.append(row)
                emit(row)
        if "sb3" in systems:

            def sb3_seed(
                s: int, env_id: str = env_id, threshold: float = threshold, name: str = name
            ) -> tuple[int, dict[str, Any] | None, int]:
                cmd = [sb3_python, str(RUNNER), "--env", env_id, "--seed", str(s), "--budget", str(a.budget)]
                cmd += ["--check-every", str(a.check_every), "--episodes", str(a.episodes)]
                cmd += ["--threshold", str(threshold), "--eval-seed", str(EVAL_SEED)]
                cmd += ["--final-seed", str(FINAL_SEED), "--threads", str(a.sb3_threads)]
                cmd += ["--stop-at-threshold"] if a.stop_at_threshold else []
                code, lines = run_lines(f"{name} sb3 seed={s}", cmd, dict(os.environ), a.timeout)
                return s, next((x for x in lines if x.get("event") in ("result", "skip")), None), code

            from concurrent.futures import ThreadPoolExecutor

            # --sb3-jobs > 1: that many seeds train at once, one process each (SB3's way to fill the cores)
            with ThreadPoolExecutor(max(1, a.sb3_jobs)) as pool:
                done = list(pool.map(sb3_seed, range(a.seeds)))
            for s, result, code in done:
                if result is None or result["event"] == "skip":
                    reason = result["reason"] if result else f"exit {code}, no result"
                    emit({**common, "system": "sb3", "seed": s, "skipped": reason})
                    continue
                fields = {k: v for k, v in result.items() if k != "event"}
                row = {**common, "system": "sb3", "seed": s, "sb3_jobs": max(1, a.sb3_jobs), **fields}
                rows.append(row)
                emit(row)
        if rows:
            summary = summarize(name, env_id, threshold, rows)
            summaries.append(summary)
            emit(summary)
        all_rows += rows
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    if a.markdown:
        print()
        print(markdown(all_rows, summaries, f"bench/zoo.py, {stamp}, {where}"))


if __name__ == "__main__":
    main()
