"""Hyperparameter sweeps: a search space in YAML, expanded into validated trial configs, and the
comparison of finished trials. No Prefect, no Ray here: ``flows/sweep.py`` runs the trials.

A sweep file::

    base: configs/cartpole.yaml        # the config every trial starts from (default: built-in defaults)
    method: random                     # grid (every combination of lists) or random (``trials`` draws)
    trials: 8                          # random only
    seed: 0                            # random only: the draws are reproducible
    eval_episodes: 20                  # greedy gymnasium episodes per trained seed: each trial's selection
                                       # score, and the chosen trial's held-out score (other episodes)
    populations: true                  # trials that differ only in shape-free hyperparameters train as
                                       # one program, one task per group (false: one task per trial)
    fixed:                             # overrides shared by every trial
      train.max_env_steps: 100000
    space:                             # any dotted config field
      ppo.learning_rate: {low: 3.0e-4, high: 1.0e-2, log: true}   # random: a range
      ppo.epochs_per_update: [2, 4, 8]                              # grid or random: a list of choices
      ppo.clip_epsilon: {low: 0.1, high: 0.3}
      env.num_envs: {low: 4, high: 16, int: true}

Every trial's config is validated before any trial runs; a bad one is reported with its trial number.

Groups (:func:`group_trials`): trials whose configs differ only in hyperparameters that shape no array
(learning rate, clip epsilon, gamma, GAE lambda, entropy/value coefficients, max grad norm, Adam epsilon,
annealing) form one population (:mod:`ppo.population`): one task, one compiled program, every trial still
its own trainer with its own MLflow run, checkpoint and scores. Trials that differ in a shaping key (say
``ppo.epochs_per_update``) land in different groups, which run in parallel like trials did.

Scores, and the episodes behind them (:func:`eval_seeds`). The best of several noisy scores is biased
upward (a winner's curse), so the episodes that choose the best trial never report its score:

* ``score_selection``: every trial, on the ``sweep_select`` stream of :mod:`ppo.evaluate`, gymnasium seeds
  ``[3 * 2**28, 3 * 2**28 + eval_episodes)``, each played by every trained seed of the trial (so every
  trial faces the same episodes). The best trial is the one with the highest selection score.
* ``score_heldout``: the chosen trial only, restored from its checkpoint and re-evaluated on the
  ``sweep_heldout`` stream, seeds ``[4 * 2**28, 4 * 2**28 + eval_episodes)``, again every trained seed.
  This is the score the sweep reports for its best trial.

Both are the greedy return averaged over the episodes of each trained seed, then over the seeds. The two
ranges are disjoint from each other and from training's, the final evaluation's and the gate's episodes.
The same ranges serve every sweep, so held-out scores of different sweeps are comparable.
"""

from __future__ import annotations

import builtins
import itertools
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ppo.config import Config, ConfigError, load_config, read_yaml
from ppo.evaluate import stream_seed


class Range(BaseModel):
    """A continuous (or, with ``int``, integer) interval for random search."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False
    int: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def draw(self, rng: np.random.Generator) -> float | builtins.int:  # the field ``int`` shadows the type
        if self.int:
            return int(rng.integers(int(math.ceil(self.low)), int(math.floor(self.high)) + 1))
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: str | None = None
    method: Literal["grid", "random"] = "grid"
    trials: int | None = Field(None, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    eval_episodes: int = Field(20, ge=1, le=10_000)
    populations: bool = True
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, list[Any] | Range] = Field(min_length=1)

    @model_validator(mode="after")
    def _method(self) -> SweepSpec:
        if self.method == "grid":
            ranges = [k for k, v in self.space.items() if isinstance(v, Range)]
            if ranges:
                raise ValueError(
                    f"grid search needs lists of values; {', '.join(ranges)} are ranges (use "
                    "method: random, or list the values)"
                )
        elif self.trials is None:
            raise ValueError("random search needs trials: N")
        for key, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key}: needs at least one value")
        return self


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    data = read_yaml(path, "sweep file")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc']) or '<sweep>'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"invalid sweep {str(path)!r}:\n  " + "\n  ".join(lines)) from None


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials' swept values, in order: every combination (grid) or ``trials`` seeded draws (random)."""
    keys = list(spec.space)
    if spec.method == "grid":
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.space.values())]
    rng = np.random.default_rng(spec.seed)
    trials = []
    for _ in range(spec.trials or 0):
        point = {}
        for key, values in spec.space.items():
            point[key] = (
                values.draw(rng) if isinstance(values, Range) else values[int(rng.integers(len(values)))]
            )
        trials.append(point)
    return trials


def trial_configs(spec: SweepSpec, root: Path | None = None) -> list[tuple[dict[str, Any], Config]]:
    """Each trial's swept values and its full, validated config (base + fixed + swept)."""
    base = spec.base
    if base is not None and root is not None and not Path(base).is_absolute():
        base = str(root / base)
    out = []
    for i, point in enumerate(expand(spec)):
        try:
            out.append((point, load_config(base, {**spec.fixed, **point})))
        except ConfigError as e:
            raise ConfigError(f"sweep trial {i} {point}: {e}") from None
    return out


def group_trials(configs: list[Config], populations: bool = True) -> list[list[int]]:
    """The trials (indices into ``configs``) that train together, in trial order: one group per distinct
    :func:`ppo.population.group_key` (or, without ``populations``, one group per trial)."""
    if not populations:
        return [[i] for i in range(len(configs))]
    from ppo.population import group_key

    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(group_key(config), []).append(i)
    return list(groups.values())


def eval_seeds(episodes: int) -> dict[str, tuple[int, int]]:
    """The gymnasium seed ranges ``[start, stop)`` a sweep evaluates on (see the module docstring).

    ``selection`` scores every trial and chooses the best; ``heldout`` scores only the chosen trial, for
    the score the sweep reports. Separate streams of :mod:`ppo.evaluate`, so they never share an episode.
    """
    select, heldout = stream_seed("sweep_select", 0, episodes), stream_seed("sweep_heldout", 0, episodes)
    return {"selection": (select, select + episodes), "heldout": (heldout, heldout + episodes)}


def seeds_note(episodes: int) -> str:
    """One sentence saying which episodes each score column of the comparison table comes from."""
    seeds = eval_seeds(episodes)
    return (
        f"score_selection: every trial, gymnasium seeds [{seeds['selection'][0]}, {seeds['selection'][1]}) "
        f"per trained seed (stream sweep_select; chose the best trial); score_heldout: the chosen trial "
        f"only, seeds [{seeds['heldout'][0]}, {seeds['heldout'][1]}) (stream sweep_heldout; the reported "
        "score, on episodes that did not choose it)"
    )


def trial_score(evaluation: dict[str, Any]) -> tuple[float, float]:
    """A trial's score (greedy return, mean over each trained seed's episodes, then over seeds) and the
    std over all its episodes, from :meth:`ppo.trainer.PPOTrainer.evaluate` with ``all_seeds=True``."""
    return float(np.mean(evaluation["per_seed_avg"])), float(np.std(evaluation["returns"]))


def _finished(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if not r.get("error")]


def best_trial(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The finished trial with the highest selection score; ties go to fewer env steps (the cheaper
    config)."""
    return max(_finished(results), key=lambda r: (r["score_selection"], -r["env_steps"]))


def comparison_table(
    results: list[dict[str, Any]], heldout: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per trial, best first, diverged trials last: swept values, scores, env steps, wall time.

    ``score_selection`` ranks the trials; ``score_heldout`` (from ``heldout``, the chosen trial's held-out
    evaluation) is filled for the chosen trial only: :func:`seeds_note` says which episodes each is on.
    """

    def held(r: dict[str, Any], key: str) -> float | None:
        return round(heldout[key], 2) if heldout and heldout["trial"] == r["trial"] else None

    rows = [
        {
            "trial": r["trial"],
            **r["params"],
            "status": "diverged" if r.get("error") else "ok",
            "score_selection": round(r["score_selection"], 2),
            "std_selection": round(r["std_selection"], 2),
            "score_heldout": held(r, "score_heldout"),
            "std_heldout": held(r, "std_heldout"),
            "env_steps": r["env_steps"],
            "converged": r["converged"],
            "wall_s": round(r["wall_s"], 1),
            "mlflow_run": r.get("run_id"),
        }
        for r in results
    ]
    return sorted(
        rows,
        key=lambda row: (
            row["status"] != "ok",
            -row["score_selection"] if row["status"] == "ok" else 0,
            row["env_steps"],
        ),
    )


def plot_sweep(
    results: list[dict[str, Any]], path: Path, title: str = "PPO sweep", heldout: dict[str, Any] | None = None
) -> Path:
    """Selection score per trial (with the chosen trial's held-out score beside it), and selection score
    against each swept parameter (log x where the values span 10x+)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _finished(results)
    keys = list(results[0]["params"])
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4.2 * (1 + len(keys)), 3.8), squeeze=False)
    axes = axes[0]
    best = best_trial(results)["trial"]
    trials = [r["trial"] for r in results]
    axes[0].bar(
        trials,
        [r["score_selection"] for r in results],
        yerr=[r["std_selection"] for r in results],
        color=["tab:orange" if t == best else "tab:blue" for t in trials],
        capsize=3,
        label="selection",
    )
    if heldout is not None:
        axes[0].errorbar(
            [heldout["trial"]],
            [heldout["score_heldout"]],
            yerr=[heldout["std_heldout"]],
            fmt="D",
            color="black",
            capsize=3,
            label="held-out (reported)",
        )
        axes[0].legend(fontsize=8, loc="best")
    axes[0].set_xticks(trials)
    axes[0].set_xlabel("trial (error bar: std over episodes)")
    axes[0].set_ylabel("greedy return (mean over seeds)")
    axes[0].set_title("selection score per trial (best in orange)", fontsize=10)
    for ax, key in zip(axes[1:], keys, strict=True):
        xs = [r["params"][key] for r in results]
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, [r["score_selection"] for r in results])
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = [str(x) for x in xs]
            ax.scatter(labels, [r["score_selection"] for r in results])
        ax.set_xlabel(key)
        ax.set_ylabel("selection score")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    import io

    from ppo import atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())  # a full disk keeps the previous plot, leaves no torn one
    plt.close(fig)
    return path
