"""Gate statistics: agreement with scipy where the methods coincide, and calibration by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from ppo.stats import bootstrap_ci, gate_decision, iqm, mean, optimality_gap, paired_difference_ci


@pytest.mark.parametrize("n", [4, 7, 20, 101])
def test_iqm_is_scipy_trim_mean(n):
    x = np.random.default_rng(n).normal(size=n)
    assert iqm(x) == pytest.approx(sps.trim_mean(x, 0.25))


def test_optimality_gap():
    assert optimality_gap(np.array([500, 400, 600]), 500) == pytest.approx(100 / 3)


def _scipy_ci(data, statistic, **kw):
    res = sps.bootstrap(data, statistic, n_resamples=20000, confidence_level=0.95, method="percentile",
                        vectorized=True, random_state=1, **kw)
    return res.confidence_interval.low, res.confidence_interval.high


def test_single_seed_bootstrap_matches_scipy():
    x = np.random.default_rng(0).gamma(4.0, 50.0, size=60)
    ours = bootstrap_ci(x, mean, n_boot=20000)
    lo, hi = _scipy_ci((x,), lambda a, axis: a.mean(axis=axis))
    scale = x.std() / np.sqrt(x.size)
    assert ours["point"] == pytest.approx(x.mean())
    assert abs(ours["ci_low"] - lo) < 0.1 * scale and abs(ours["ci_high"] - hi) < 0.1 * scale


def test_within_seed_stratified_bootstrap_matches_scipy_multi_sample():
    rng = np.random.default_rng(1)
    r = np.stack([rng.normal(300, 40, 30), rng.normal(360, 20, 30)])
    ours = bootstrap_ci(r, mean, n_boot=20000, resample_seeds=False)
    lo, hi = _scipy_ci((r[0], r[1]), lambda a, b, axis: np.concatenate([a, b], axis=axis).mean(axis=axis))
    scale = r.std() / np.sqrt(r.size)
    assert abs(ours["ci_low"] - lo) < 0.1 * scale and abs(ours["ci_high"] - hi) < 0.1 * scale


def test_paired_difference_matches_scipy_paired():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0, 50, 40)
    cand, champ = 420 + difficulty + rng.normal(0, 10, 40), 400 + difficulty + rng.normal(0, 10, 40)
    ours = paired_difference_ci(cand, champ, mean, n_boot=20000)
    lo, hi = _scipy_ci((cand, champ), lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis), paired=True)
    assert ours["point"] == pytest.approx(20, abs=5)
    assert abs(ours["ci_low"] - lo) < 0.4 and abs(ours["ci_high"] - hi) < 0.4
    # pairing matters: unpaired, the shared difficulty would swamp the 20-point difference
    assert ours["ci_low"] > 10


def test_seed_resampling_widens_the_ci_when_seeds_disagree():
    rng = np.random.default_rng(3)
    r = np.stack([rng.normal(m, 5, 20) for m in (300, 400, 500)])
    narrow = bootstrap_ci(r, mean, resample_seeds=False)
    wide = bootstrap_ci(r, mean, resample_seeds=True)
    assert (wide["ci_high"] - wide["ci_low"]) > 3 * (narrow["ci_high"] - narrow["ci_low"])


def test_gate_rules():
    good = np.full((2, 20), 500.0)
    assert gate_decision(good, None, 475, 10)["passed"]
    bad = gate_decision(np.full((2, 20), 300.0), None, 475, 10)
    assert not bad["passed"] and "min_return" in bad["reason"]
    worse = gate_decision(np.full((1, 20), 480.0), np.full(20, 500.0), 475, 10, "non_inferior")
    assert not worse["passed"] and "champion" in worse["reason"]
    assert gate_decision(np.full((1, 20), 495.0), np.full(20, 500.0), 475, 10, "non_inferior")["passed"]
    assert not gate_decision(np.full((1, 20), 500.0), np.full(20, 500.0), 475, 10, "superior")["passed"]
    with pytest.raises(ValueError, match="mode"):
        gate_decision(good, None, 0, 0, "better")


def _simulate(delta: float, trials: int = 200, seeds: int = 3, episodes: int = 20) -> float:
    rng = np.random.default_rng(12345)
    promoted = 0
    for t in range(trials):
        # the same eval seeds make an episode hard or easy for both policies; every candidate seed is a
        # policy exactly `delta` better than the champion (delta 0: equally good)
        difficulty = rng.normal(0, 40, episodes)
        champion = 350 + difficulty + rng.normal(0, 25, episodes)
        candidate = 350 + delta + difficulty + rng.normal(0, 25, (seeds, episodes))
        d = gate_decision(candidate, champion, min_return=0, margin=0, mode="superior", n_boot=1000, seed=t)
        promoted += d["passed"]
    return promoted / trials


def test_superior_gate_calibration():
    equal = _simulate(0.0)
    better = _simulate(60.0)
    print(f"calibration: equal policies promoted {equal:.3f}, +60 better promoted {better:.3f}")
    assert equal <= 0.05
    assert better >= 0.95
