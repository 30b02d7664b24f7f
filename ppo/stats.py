"""Evaluation statistics (NumPy, vectorised, seeded) and the promotion gate.

Summary statistics: IQM, mean, median, optimality gap (Agarwal et al. 2021, "Deep RL at the edge of
the statistical precipice"), with percentile-bootstrap confidence intervals.

Returns are arrays ``[seeds, episodes]`` in which episode ``j`` of every row (and of the champion)
starts from the same start state. That shared start state is what the bootstrap must respect: a hard
start state is hard for every seed, so the episode is the resampling unit and one draw of episode
indices serves every row of a bootstrap sample (and both policies of a paired difference). Drawing
episodes independently per seed treats the seeds' episodes as independent, averages the shared
start-state difficulty away and gives intervals that are too narrow: with 10 seeds the ``min_return``
lower bound then missed 8-14% of the time instead of the nominal 2.5% (tests/test_stats.py).

The gate (:func:`gate_decision`) certifies what is deployed: the single policy that would be
registered, against the champion's deployed policy, paired on fresh held-out start states, plus a
recipe check so that a lucky seed of a bad recipe is not promoted. See README.md, "Promotion rules".
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # reduces the last axis

MODES = ("non_inferior", "superior")


def iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis: mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(x, dtype=float), axis=-1)
    n = x.shape[-1]
    cut = int(0.25 * n)
    return x[..., cut : n - cut].mean(axis=-1)


def mean(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=float).mean(axis=-1)


def median(x: np.ndarray) -> np.ndarray:
    return np.median(np.asarray(x, dtype=float), axis=-1)


def optimality_gap(x: np.ndarray, target: float) -> np.ndarray:
    """Mean shortfall below ``target`` (0 when every episode reaches it)."""
    return (target - np.minimum(np.asarray(x, dtype=float), target)).mean(axis=-1)


def _as_2d(returns: Any, name: str = "returns") -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.size == 0:
        raise ValueError(f"{name} must be [seeds, episodes] (or [episodes]), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return r


def percentile_band(boot: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of bootstrap draws ``boot`` ``[n_boot, ...]`` at each point of the other
    axes (one quantile call for a whole curve's band)."""
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return lo, hi


def _percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = percentile_band(np.ravel(boot), confidence)
    return float(lo), float(hi)


def _check_boot_args(n_boot: int, confidence: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _resample(r: np.ndarray, rng: np.random.Generator, n_boot: int, resample_seeds: bool) -> np.ndarray:
    """Bootstrap samples ``[n_boot, seeds, episodes]`` of ``r`` ``[seeds, episodes]``.

    Seeds are drawn with replacement (when asked and there is more than one) and ONE draw of episode
    indices is shared by every row of a sample, because episode ``j`` of every seed starts from the
    same state: the start state, not the (seed, episode) cell, is the independent unit.
    """
    s, e = r.shape
    ep_idx = rng.integers(0, e, size=(n_boot, 1, e))
    if resample_seeds and s > 1:
        seed_idx = rng.integers(0, s, size=(n_boot, s, 1))
        return r[seed_idx, ep_idx]
    return r[:, ep_idx[:, 0]].transpose(1, 0, 2)


def bootstrap_ci(
    returns: Any,
    statistic: Statistic = iqm,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
) -> dict[str, float]:
    """Point estimate and percentile CI of ``statistic`` over all episodes of all seeds (pooled).

    ``returns`` is ``[seeds, episodes]`` (1-D: one policy). A bootstrap sample draws the seeds with
    replacement (``resample_seeds`` and more than one seed: the CI then covers the recipe, i.e. what
    another set of seeds would give) and one set of episode indices shared by all its seeds (they face
    the same start states, so their episodes are not independent). With one seed, or
    ``resample_seeds=False``, the CI is conditional on these very policies: it covers start-state and
    episode noise only and says nothing about seed-to-seed variation.
    """
    _check_boot_args(n_boot, confidence)
    r = _as_2d(returns)
    rng = np.random.default_rng(seed)
    samples = _resample(r, rng, int(n_boot), resample_seeds).reshape(int(n_boot), -1)
    lo, hi = _percentile_ci(statistic(samples), confidence)
    return {"point": float(statistic(r.reshape(-1))), "ci_low": lo, "ci_high": hi}


def paired_difference_ci(
    candidate: Any,
    baseline: Any,
    statistic: Statistic = iqm,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """CI of ``statistic(candidate) - statistic(baseline)``, both evaluated on the same episodes.

    ``candidate`` is ``[seeds, episodes]`` (1-D: one policy); ``baseline`` is ``[episodes]`` (one
    policy) or the same shape as ``candidate``. Episode ``j`` of every row faces the same start state
    as baseline episode ``j``, so the episode draw is shared by both policies (the pairing removes the
    start-state difficulty from the difference); candidate seeds, if several, are resampled together
    with their baseline rows.
    """
    _check_boot_args(n_boot, confidence)
    c = _as_2d(candidate, "candidate")
    b = _as_2d(baseline, "baseline")
    if b.shape[0] == 1:  # one baseline policy, paired with every candidate row
        b = np.broadcast_to(b, (c.shape[0], b.shape[1]))
    if b.shape != c.shape:
        raise ValueError(f"baseline shape {b.shape} does not pair with candidate {c.shape}")
    n, (s, e) = int(n_boot), c.shape
    rng = np.random.default_rng(seed)
    ep_idx = rng.integers(0, e, size=(n, 1, e))  # one draw for every row and both policies
    seed_idx = rng.integers(0, s, size=(n, s, 1)) if s > 1 else np.zeros((n, 1, 1), dtype=np.intp)
    cs = c[seed_idx, ep_idx].reshape(n, -1)
    bs = b[seed_idx, ep_idx].reshape(n, -1)
    lo, hi = _percentile_ci(statistic(cs) - statistic(bs), confidence)
    point = float(statistic(c.reshape(-1)) - statistic(b.reshape(-1)))
    return {"point": point, "ci_low": lo, "ci_high": hi}


def probability_of_improvement(candidate: Any, baseline: Any) -> np.ndarray:
    """P(candidate > baseline) + P(candidate = baseline) / 2 over paired episodes (the last axis):
    how often the candidate beats the baseline on the same start state, ties counted half (rliable's
    probability of improvement, with the pairing this project's evaluation gives: episode ``j`` of both
    faces one start state). 0.5: no better, no worse; leading axes are kept (bootstrap rows)."""
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if c.shape[-1] != b.shape[-1]:
        raise ValueError(f"candidate and baseline must pair episode for episode: {c.shape} vs {b.shape}")
    return (c > b).mean(axis=-1) + 0.5 * (c == b).mean(axis=-1)


def gate_decision(
    seed_returns: Any,
    candidate_index: int,
    champion_returns: Any | None,
    *,
    min_return: float,
    margin: float,
    mode: str = "non_inferior",
    min_seeds: int = 5,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The promotion gate (README.md, "Promotion rules"): does the policy that would be deployed deserve
    ``@champion``?

    What is deployed is ONE policy (row ``candidate_index`` of ``seed_returns``, chosen beforehand on
    other episodes, so these episodes carry no selection bias), so the gate certifies that policy, not
    the pool of seeds, against the champion's deployed policy, both played on the same fresh held-out
    start states (episode ``j`` is the same start state in every row and in ``champion_returns``).
    The other seeds of the recipe only serve the recipe check.

    Args:
        seed_returns: ``[S, E]`` greedy returns of every trained seed of the candidate's recipe.
        candidate_index: the row that is the deployed policy.
        champion_returns: ``[E]`` returns of the champion's deployed policy on the same start states,
            or None when there is no champion yet.
        min_return: the return the deployed policy must reach.
        margin: ABSOLUTE non-inferiority margin in return units (callers convert a relative margin).
        mode: ``non_inferior`` (may be up to ``margin`` worse than the champion) or ``superior``
            (must be better than the champion).
        min_seeds: the recipe must have trained at least this many seeds, and this many must reach
            ``min_return``.

    Every criterion must hold (each CI is a two-sided percentile bootstrap at ``confidence``, whose
    lower bound errs on the generous side with probability (1 - confidence) / 2):

    a. deployed IQM: CI lower bound >= ``min_return`` (episodes resampled);
    b. deployed mean: CI lower bound >= ``min_return``. The IQM trims the worst quarter of episodes
       away, so a policy that collapses on 10% of start states keeps a perfect IQM; the mean counts
       every failed episode;
    c. recipe: ``S >= min_seeds`` and at least ``min_seeds`` rows have an IQM (point estimate) >=
       ``min_return``, so that a lucky seed of a bad recipe is not promoted. The recipe's pooled IQM
       and its stratified CI (:func:`bootstrap_ci`) are reported as information;
    d. with a champion, the paired difference of means (deployed minus champion, one episode draw for
       both): ``non_inferior``: CI lower bound >= ``-margin``; ``superior``: CI lower bound > 0.
       Reported beside it, deciding nothing: the probability of improvement
       (:func:`probability_of_improvement`) with its CI on the same episode draw.

    Returns a JSON-able dict: ``passed``, ``reason`` ("passed" or the failed criteria, each naming
    the figure and its threshold) and the figures behind them.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'non_inferior' or 'superior', got {mode!r}")
    _check_boot_args(n_boot, confidence)
    r = _as_2d(seed_returns, "seed_returns")
    s, e = r.shape
    try:
        k = operator.index(candidate_index)
    except TypeError:
        raise ValueError(
            f"candidate_index must be an integer row of seed_returns, got {candidate_index!r}"
        ) from None
    if not 0 <= k < s:
        raise ValueError(f"candidate_index {k} out of range for {s} seed(s) (rows 0..{s - 1})")
    champ = None
    if champion_returns is not None:
        champ = np.asarray(champion_returns, dtype=float)
        if champ.ndim == 2 and champ.shape[0] == 1:
            champ = champ[0]
        if champ.shape != (e,):
            raise ValueError(
                f"champion_returns must be [episodes] = ({e},), paired with seed_returns' episodes, "
                f"got shape {champ.shape}"
            )
        if not np.all(np.isfinite(champ)):
            raise ValueError("champion_returns must be finite (no NaN or inf)")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 (an absolute return margin), got {margin}")
    if int(min_seeds) < 1:
        raise ValueError(f"min_seeds must be >= 1, got {min_seeds}")
    min_return, margin, min_seeds, n = float(min_return), float(margin), int(min_seeds), int(n_boot)

    # one episode draw serves the deployed policy's CIs and the pairing with the champion
    rng = np.random.default_rng(seed)
    ep_idx = rng.integers(0, e, size=(n, e))
    dep = r[k]
    dep_boot = dep[ep_idx]
    dep_boot_mean = dep_boot.mean(axis=-1)
    iqm_lo, iqm_hi = _percentile_ci(iqm(dep_boot), confidence)
    mean_lo, mean_hi = _percentile_ci(dep_boot_mean, confidence)
    seed_iqms = iqm(r)
    reaching = int((seed_iqms >= min_return).sum())
    recipe = bootstrap_ci(r, iqm, n, confidence, seed=seed)

    out: dict[str, Any] = {
        "mode": mode,
        "min_return": min_return,
        "margin": margin,
        "min_seeds": min_seeds,
        "iqm": float(iqm(dep)),
        "ci_low": iqm_lo,
        "ci_high": iqm_hi,
        "mean": float(dep.mean()),
        "mean_ci_low": mean_lo,
        "mean_ci_high": mean_hi,
        "median": float(np.median(dep)),
        "episodes": int(e),
        "seeds": int(s),
        "candidate_index": int(k),
        "seed_iqms": [float(v) for v in seed_iqms],
        "seeds_reaching": reaching,
        "recipe_iqm": recipe["point"],
        "recipe_ci_low": recipe["ci_low"],
        "recipe_ci_high": recipe["ci_high"],
        "confidence": float(confidence),
        "n_boot": n,
    }
    reasons = []
    if iqm_lo < min_return:
        reasons.append(f"deployed policy: IQM CI lower bound {iqm_lo:.2f} < min_return {min_return}")
    if mean_lo < min_return:
        reasons.append(
            f"deployed policy: mean CI lower bound {mean_lo:.2f} < min_return {min_return} "
            "(the mean counts the failed episodes that the IQM trims away)"
        )
    if s < min_seeds:
        reasons.append(
            f"recipe: {s} seed{'s' if s != 1 else ''} trained, the gate needs >= {min_seeds} (train.seeds)"
        )
    elif reaching < min_seeds:
        reasons.append(f"recipe: {reaching} of {s} seeds reach min_return {min_return} (needs {min_seeds})")
    if champ is not None:
        champ_boot = champ[ep_idx]
        diff_boot = dep_boot_mean - champ_boot.mean(axis=-1)
        d_lo, d_hi = _percentile_ci(diff_boot, confidence)
        # information, not a criterion: how often the deployed policy beats the champion per start state
        p_lo, p_hi = _percentile_ci(probability_of_improvement(dep_boot, champ_boot), confidence)
        out.update(
            champion_iqm=float(iqm(champ)),
            champion_mean=float(champ.mean()),
            diff=float(dep.mean() - champ.mean()),
            diff_ci_low=d_lo,
            diff_ci_high=d_hi,
            improvement_probability=float(probability_of_improvement(dep, champ)),
            improvement_probability_ci_low=p_lo,
            improvement_probability_ci_high=p_hi,
        )
        if mode == "superior" and not d_lo > 0:
            reasons.append(f"vs champion (superior): mean difference CI lower bound {d_lo:.2f} <= 0")
        elif mode == "non_inferior" and d_lo < -margin:
            reasons.append(
                f"vs champion (non_inferior): mean difference CI lower bound {d_lo:.2f} < -margin {-margin}"
            )
    out["passed"] = not reasons
    out["reason"] = "; ".join(reasons) if reasons else "passed"
    return out
