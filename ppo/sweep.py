"""Hyperparameter sweeps: a search space in YAML, expanded into validated trial configs, and the
comparison of finished trials. No Prefect, no Ray here: ``flows/sweep.py`` runs the trials.

A sweep file::

    base: configs/cartpole.yaml        # the config every trial starts from (default: built-in defaults)
    method: random                     # grid (every combination of lists), random (``trials`` draws) or
                                       # pbt (``trials`` draws, then population-based training)
    trials: 8                          # random and pbt only
    seed: 0                            # random and pbt only: the draws are reproducible
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

``method: pbt`` (:mod:`ppo.pbt`): the ``trials`` draws are the initial members of one population; every
``pbt.interval`` updates the worst ``pbt.fraction`` copy the weights, optimiser state and hyperparameters
of one of the best and multiply each swept value by one of ``pbt.factors``. Every swept key must then be
a shape-free numeric hyperparameter. Each trial's run records its lineage (``pbt.lineage``, the values
as ``pbt/<field>`` curves, the final values as ``pbt.final.*``); ``best_config.yaml`` holds the best
trial's final values, and the sweep's run a lineage plot::

    method: pbt
    trials: 8
    pbt: {interval: 10, fraction: 0.25, factors: [0.8, 1.2]}

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


class PBTSpec(BaseModel):
    """A sweep's population-based training (:class:`ppo.pbt.PBT`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: int = Field(ge=1, description="updates between exploit steps (a multiple of updates_per_chunk)")
    fraction: float = Field(0.25, gt=0.0, le=0.5)
    factors: list[float] = Field(default_factory=lambda: [0.8, 1.2], min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> PBTSpec:
        if any(f <= 0 for f in self.factors):
            raise ValueError(f"factors must be > 0, got {self.factors}")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    base: str | None = None
    method: Literal["grid", "random", "pbt"] = "grid"
    trials: int | None = Field(None, ge=1, le=10_000)
    seed: int = Field(0, ge=0)
    eval_episodes: int = Field(20, ge=1, le=10_000)
    populations: bool = True
    pbt: PBTSpec | None = None
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
            raise ValueError(f"{self.method} search needs trials: N")
        if self.method == "pbt":
            self._check_pbt()
        elif self.pbt is not None:
            raise ValueError(f"a pbt section needs method: pbt (method is {self.method})")
        for key, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key}: needs at least one value")
        return self

    def _check_pbt(self) -> None:
        from ppo.config import HPARAM_FIELDS

        if self.pbt is None:
            raise ValueError("method: pbt needs a pbt section, e.g. pbt: {interval: 10}")
        if (self.trials or 0) < 2:
            raise ValueError("population-based training needs trials: 2 or more (the population)")
        if not self.populations:
            raise ValueError("population-based training trains one population: populations must be true")
        perturbable = [f"ppo.{f}" for f in HPARAM_FIELDS if f != "anneal_lr"]
        for key, values in self.space.items():
            numeric = isinstance(values, Range) or all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            )
            if key not in perturbable or not numeric:
                raise ValueError(
                    f"space.{key}: population-based training perturbs numeric shape-free hyperparameters "
                    f"only ({', '.join(perturbable)})"
                )


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
    # random, and pbt's initial population
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
    """Each trial's swept values and its full, validated config (base + fixed + swept). A relative
    ``base`` is a path in ``root``, by default the project's checkout
    (:data:`ppo.checkpoint.SOURCE_ROOT`: ``configs/cartpole.yaml`` wherever the command runs)."""
    from ppo.checkpoint import SOURCE_ROOT

    base = spec.base
    if base is not None and not Path(base).is_absolute():
        base = str((root or SOURCE_ROOT) / base)
    out = []
    for i, point in enumerate(expand(spec)):
        try:
            out.append((point, load_config(base, {**spec.fixed, **point})))
        except ConfigError as e:
            raise ConfigError(f"sweep trial {i} {point}: {e}") from None
    if spec.pbt is not None and out:
        from ppo.runtime import uses_host_envs

        if uses_host_envs(out[0][1]):
            raise ConfigError(
                f"method: pbt trains one population: {out[0][1].env.id} trains on host-side envs, which a "
                "population cannot (use method: random)"
            )
        chunk = out[0][1].train.updates_per_chunk
        if spec.pbt.interval % chunk:
            raise ConfigError(
                f"pbt.interval: {spec.pbt.interval} updates is not a multiple of train.updates_per_chunk "
                f"({chunk}): exploit steps happen between chunks"
            )
    return out


def pbt_of(spec: SweepSpec) -> dict[str, Any] | None:
    """The keyword arguments of :class:`ppo.pbt.PBT` for a pbt sweep (JSON-ready), or None."""
    if spec.pbt is None:
        return None
    return {
        "interval": spec.pbt.interval,
        "fields": [key.removeprefix("ppo.") for key in spec.space],
        "fraction": spec.pbt.fraction,
        "factors": list(spec.pbt.factors),
        "seed": spec.seed,
    }


def group_trials(configs: list[Config], populations: bool = True) -> list[list[int]]:
    """The trials (indices into ``configs``) that train together, in trial order: one group per distinct
    :func:`ppo.population.group_key` (or, without ``populations``, one group per trial). A config that
    trains on host-side envs (``ppo.host_program``) is a group of its own: its envs step in Python."""
    if not populations:
        return [[i] for i in range(len(configs))]
    from ppo.population import group_key
    from ppo.runtime import uses_host_envs

    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(f"host-{i}" if uses_host_envs(config) else group_key(config), []).append(i)
    return list(groups.values())


def trains_here(groups: int) -> bool:
    """Whether ``ppo sweep`` trains in its own process (the flow ``sweep_ppo_here``) rather than on Ray: one
    group and no Ray cluster named in ``$RAY_ADDRESS``. A single group is a single task, which a local
    Ray cannot spread; it would only add its start-up (~4 s), its shutdown and a worker process that
    imports and compiles everything again."""
    import os

    return groups == 1 and not os.environ.get("RAY_ADDRESS")


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
            **{f"final.{k}": v for k, v in (r.get("final_params") or {}).items()},  # pbt: values at the end
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


def plot_lineage(results: list[dict[str, Any]], path: Path, best: int, title: str = "PBT lineage") -> Path:
    """Population-based training: each trial's perturbed values over updates (a step curve per trial, a
    dot where it copied another trial, the best trial in orange), one panel per swept key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppo import atomic
    from ppo.pbt import values_over_updates

    results = [r for r in _finished(results) if "lineage" in r]
    keys = list(results[0]["params"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        field = key.removeprefix("ppo.")
        for r in sorted(results, key=lambda r: r["trial"] == best):  # the best drawn last, on top
            initial = {field: r["params"][key]}
            updates, values = values_over_updates(initial, r["lineage"], r["last_update"])[field]
            chosen = r["trial"] == best
            ax.step(
                updates,
                values,
                where="post",
                color="tab:orange" if chosen else "tab:blue",
                alpha=1.0 if chosen else 0.45,
                lw=2.0 if chosen else 1.0,
                label=f"trial {r['trial']} (best)" if chosen else None,
            )
            exploits = [e for e in r["lineage"] if field in e["hparams"]]
            ax.scatter(
                [e["update"] for e in exploits],
                [e["hparams"][field] for e in exploits],
                s=14,
                color="tab:orange" if chosen else "tab:blue",
                zorder=3,
            )
        if min(min([r["params"][key], *(e["hparams"][field] for e in r["lineage"])]) for r in results) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("update (dot: copied a better trial, then perturbed)")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path
