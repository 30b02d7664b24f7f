"""Evaluation statistics (NumPy, vectorised, seeded): IQM, mean, median, optimality gap, and
stratified bootstrap confidence intervals, as recommended by Agarwal et al. 2021 ("Deep RL at the edge
of the statistical precipice").

Returns are arrays ``[seeds, episodes]``. The stratified bootstrap resamples training seeds with
replacement and then episodes within each resampled seed. The paired version resamples eval episodes
(one draw shared by all seeds and by both policies), so the difference keeps the pairing by eval seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # reduces the last axis


def iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean over the last axis: mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(x, dtype=float), axis=-1)
    n = x.shape[-1]
    cut = int(0.25 * n)
    return x[..., cut:n - cut].mean(axis=-1)


def mean(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=float).mean(axis=-1)


def median(x: np.ndarray) -> np.ndarray:
    return np.median(np.asarray(x, dtype=float), axis=-1)


def optimality_gap(x: np.ndarray, target: float) -> np.ndarray:
    """Mean shortfall below ``target`` (0 when every episode reaches it)."""
    return (target - np.minimum(np.asarray(x, dtype=float), target)).mean(axis=-1)


def _as_2d(returns: Any) -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.size == 0:
        raise ValueError(f"returns must be [seeds, episodes], got shape {r.shape}")
    return r


def _resample_indices(rng: np.random.Generator, n_boot: int, seeds: int, episodes: int,
                      stratified_seeds: bool) -> tuple[np.ndarray, np.ndarray]:
    seed_idx = (rng.integers(0, seeds, size=(n_boot, seeds)) if stratified_seeds and seeds > 1
                else np.broadcast_to(np.arange(seeds), (n_boot, seeds)))
    ep_idx = rng.integers(0, episodes, size=(n_boot, seeds, episodes))
    return seed_idx, ep_idx


def bootstrap_ci(returns: Any, statistic: Statistic = iqm, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0, resample_seeds: bool = True) -> dict[str, float]:
    """Point estimate and percentile CI of ``statistic`` over all episodes of all seeds."""
    r = _as_2d(returns)
    s, e = r.shape
    rng = np.random.default_rng(seed)
    seed_idx, ep_idx = _resample_indices(rng, n_boot, s, e, resample_seeds)
    samples = r[seed_idx[..., None], ep_idx].reshape(n_boot, s * e)
    boot = statistic(samples)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {"point": float(statistic(r.reshape(-1))), "ci_low": float(lo), "ci_high": float(hi)}


def paired_difference_ci(candidate: Any, baseline: Any, statistic: Statistic = iqm, n_boot: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """CI of ``statistic(candidate) − statistic(baseline)``, both evaluated on the same eval episodes.

    ``candidate`` is ``[seeds, episodes]``; ``baseline`` is ``[episodes]`` (one policy) or the same shape
    as ``candidate``. Episode ``j`` of every seed faces the same start as baseline episode ``j``.
    """
    c = _as_2d(candidate)
    b = np.asarray(baseline, dtype=float)
    b = np.broadcast_to(b, c.shape) if b.ndim == 1 else _as_2d(b)
    if b.shape != c.shape:
        raise ValueError(f"baseline shape {b.shape} does not pair with candidate {c.shape}")
    s, e = c.shape
    rng = np.random.default_rng(seed)
    seed_idx, _ = _resample_indices(rng, n_boot, s, e, True)
    # The eval episode is the paired unit: one draw of episode indices serves every seed, because the
    # baseline's episode j (and its difficulty) is shared by all seeds. Independent draws per seed would
    # average the baseline's noise away and make the CI too narrow (anti-conservative gate).
    ep_idx = np.broadcast_to(rng.integers(0, e, size=(n_boot, 1, e)), (n_boot, s, e))
    cs = c[seed_idx[..., None], ep_idx].reshape(n_boot, -1)
    bs = b[seed_idx[..., None], ep_idx].reshape(n_boot, -1)
    boot = statistic(cs) - statistic(bs)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {"point": float(statistic(c.reshape(-1)) - statistic(b.reshape(-1))), "ci_low": float(lo),
            "ci_high": float(hi)}


def gate_decision(candidate: Any, champion: Any | None, min_return: float, margin: float,
                  mode: str = "non_inferior", confidence: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """The promotion gate of DESIGN.md: IQM CI lower bound ≥ ``min_return`` and, with a champion, the
    paired difference's lower bound ≥ −``margin`` (``non_inferior``) or > 0 (``superior``)."""
    if mode not in ("non_inferior", "superior"):
        raise ValueError(f"mode must be 'non_inferior' or 'superior', got {mode!r}")
    c = _as_2d(candidate)
    ci = bootstrap_ci(c, iqm, n_boot, confidence, seed)
    out: dict[str, Any] = {"iqm": ci["point"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                           "mean": float(c.mean()), "median": float(np.median(c)), "mode": mode,
                           "min_return": min_return, "margin": margin, "episodes": int(c.size),
                           "seeds": int(c.shape[0])}
    passed = ci["ci_low"] >= min_return
    reasons = [] if passed else [f"IQM CI lower bound {ci['ci_low']:.2f} < min_return {min_return}"]
    if champion is not None:
        d = paired_difference_ci(c, champion, iqm, n_boot, confidence, seed)
        out.update(diff=d["point"], diff_ci_low=d["ci_low"], diff_ci_high=d["ci_high"])
        ok = d["ci_low"] > 0 if mode == "superior" else d["ci_low"] >= -margin
        if not ok:
            bound = "0" if mode == "superior" else f"-{margin}"
            reasons.append(f"difference to champion: CI lower bound {d['ci_low']:.2f} not above {bound}")
        passed = passed and ok
    out["passed"] = bool(passed)
    out["reason"] = "; ".join(reasons) if reasons else "passed"
    return out
