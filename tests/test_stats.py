"""Gate statistics: agreement with scipy where the methods coincide, and error rates by simulation.

Simulation model (every gate cell): a start state has a difficulty shared by every policy that plays
it (normal, sd 40); each policy adds its own per-episode noise (sd 25); a recipe's seeds have true
means spread around the recipe mean (sd 15). S = 5 seeds; the deployed seed is the best one on a
separate, noisy "final eval" (10 other start states); the gate then plays E fresh start states.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import ndtr

from ppo.stats import bootstrap_ci, gate_decision, iqm, mean, optimality_gap, paired_difference_ci

TRIALS = 500
N_BOOT = 1000
DIFFICULTY_SD, NOISE_SD, SEED_SD = 40.0, 25.0, 15.0


# --- summary statistics and agreement with scipy ------------------------------------------------


@pytest.mark.parametrize("n", [4, 7, 20, 101])
def test_iqm_is_scipy_trim_mean(n):
    x = np.random.default_rng(n).normal(size=n)
    assert iqm(x) == pytest.approx(sps.trim_mean(x, 0.25))


def test_optimality_gap():
    assert optimality_gap(np.array([500, 400, 600]), 500) == pytest.approx(100 / 3)


def _scipy_ci(data, statistic, **kw):
    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=20000,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        random_state=1,
        **kw,
    )
    return res.confidence_interval.low, res.confidence_interval.high


def test_single_seed_bootstrap_matches_scipy():
    x = np.random.default_rng(0).gamma(4.0, 50.0, size=60)
    ours = bootstrap_ci(x, mean, n_boot=20000)
    lo, hi = _scipy_ci((x,), lambda a, axis: a.mean(axis=axis))
    scale = x.std() / np.sqrt(x.size)
    assert ours["point"] == pytest.approx(x.mean())
    assert abs(ours["ci_low"] - lo) < 0.1 * scale and abs(ours["ci_high"] - hi) < 0.1 * scale


def test_shared_episode_draw_matches_scipy_paired_bootstrap():
    # seeds fixed: one draw of episode indices for both rows = scipy's paired bootstrap of the pool
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 40, 30)
    r = np.stack([300 + difficulty + rng.normal(0, 20, 30), 360 + difficulty + rng.normal(0, 20, 30)])
    ours = bootstrap_ci(r, mean, n_boot=20000, resample_seeds=False)
    lo, hi = _scipy_ci(
        (r[0], r[1]), lambda a, b, axis: np.concatenate([a, b], axis=axis).mean(axis=axis), paired=True
    )
    scale = r.std() / np.sqrt(r.shape[1])
    assert abs(ours["ci_low"] - lo) < 0.1 * scale and abs(ours["ci_high"] - hi) < 0.1 * scale


def test_one_row_and_identical_rows_give_the_one_policy_ci():
    # the episode draw is shared by all rows: copies of one policy add no information, and a [1, E]
    # array is the same single policy as a 1-D one
    x = np.random.default_rng(5).normal(400, 50, 40)
    one = bootstrap_ci(x, mean, n_boot=3000, seed=7)
    assert bootstrap_ci(x[None], mean, n_boot=3000, seed=7) == one
    for resample_seeds in (False, True):
        copies = bootstrap_ci(np.tile(x, (3, 1)), mean, n_boot=3000, seed=7, resample_seeds=resample_seeds)
        assert copies == pytest.approx(one)


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
    with pytest.raises(ValueError, match="pair"):
        paired_difference_ci(cand, champ[:-1])


def test_seed_resampling_widens_the_ci_when_seeds_disagree():
    rng = np.random.default_rng(3)
    r = np.stack([rng.normal(m, 5, 20) for m in (300, 400, 500)])
    narrow = bootstrap_ci(r, mean, resample_seeds=False)
    wide = bootstrap_ci(r, mean, resample_seeds=True)
    assert (wide["ci_high"] - wide["ci_low"]) > 3 * (narrow["ci_high"] - narrow["ci_low"])


# --- calibration of bootstrap_ci's lower bound (the recipe's min_return CI) ----------------------


def _mixture_iqm(means: np.ndarray, sd: float) -> np.ndarray:
    """Exact IQM of the equal mixture of N(means[t, i], sd) over i, for every row t."""
    cdf = lambda x: ndtr((x[:, None] - means) / sd).mean(axis=1)  # noqa: E731
    lo, hi = means.min(axis=1) - 5 * sd, means.max(axis=1) + 5 * sd
    q = {}
    for p in (0.25, 0.75):  # bisection, vectorised over rows
        a, b = lo.copy(), hi.copy()
        for _ in range(60):
            m = (a + b) / 2
            below = cdf(m) < p
            a, b = np.where(below, m, a), np.where(below, b, m)
        q[p] = (a + b) / 2
    za, zb = (q[0.25][:, None] - means) / sd, (q[0.75][:, None] - means) / sd
    pdf = lambda z: np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)  # noqa: E731
    # integral of x dN(mu, sd) over [a, b] = mu (Phi(zb) - Phi(za)) - sd (phi(zb) - phi(za))
    part = means * (ndtr(zb) - ndtr(za)) - sd * (pdf(zb) - pdf(za))
    return 2 * part.mean(axis=1)


def _independent_draw_ci_low(r: np.ndarray, n_boot: int, seed: int) -> float:
    """The OLD method: seeds resampled, episodes drawn independently for every seed."""
    rng = np.random.default_rng(seed)
    s, e = r.shape
    seed_idx = rng.integers(0, s, size=(n_boot, s, 1))
    ep_idx = rng.integers(0, e, size=(n_boot, s, e))
    return float(np.quantile(iqm(r[seed_idx, ep_idx].reshape(n_boot, -1)), 0.025))


@pytest.mark.parametrize("episodes", [100, 20])
def test_min_return_ci_is_calibrated_with_seeds_sharing_start_states(episodes):
    seeds, recipe_mean = 10, 400.0
    rng = np.random.default_rng(2024 + episodes)
    true = recipe_mean + rng.normal(0, SEED_SD, (TRIALS, seeds))
    returns = (
        true[..., None]
        + rng.normal(0, DIFFICULTY_SD, (TRIALS, 1, episodes))  # shared by the 10 seeds
        + rng.normal(0, NOISE_SD, (TRIALS, seeds, episodes))
    )
    # Two truths. The recipe: a return of a new seed on a new start state is normal (mean 400), so its
    # IQM is 400. These 10 policies: the IQM of their pooled returns over infinitely many start
    # states, i.e. of the equal mixture of N(true_i, sqrt(40^2 + 25^2)), computed exactly.
    conditional = _mixture_iqm(true, float(np.hypot(DIFFICULTY_SD, NOISE_SD)))
    new = np.array([bootstrap_ci(returns[t], iqm, N_BOOT, seed=t)["ci_low"] for t in range(TRIALS)])
    old = np.array([_independent_draw_ci_low(returns[t], N_BOOT, t) for t in range(TRIALS)])
    miss_new, miss_new_cond = (new > recipe_mean).mean(), (new > conditional).mean()
    miss_old, miss_old_cond = (old > recipe_mean).mean(), (old > conditional).mean()
    print(
        f"\nE={episodes}, 10 seeds, lower bound above the truth (nominal 0.025): shared episode draw "
        f"{miss_new:.3f} (recipe truth) / {miss_new_cond:.3f} (these policies); independent per-seed "
        f"draws {miss_old:.3f} / {miss_old_cond:.3f}"
    )
    assert miss_new <= 0.05 and miss_new_cond <= 0.05
    # the old independent draws average the shared start-state difficulty away: too narrow
    assert miss_old > miss_new + 0.02
    if episodes == 20:
        assert miss_old > 0.08 and miss_old_cond > 0.05


@pytest.mark.parametrize("episodes", [100, 20])
def test_deployed_policy_iqm_ci_is_calibrated(episodes):
    # criterion a: one policy, episodes resampled; its returns are normal so its true IQM is its mean
    rng = np.random.default_rng(77 + episodes)
    x = 400 + rng.normal(0, DIFFICULTY_SD, (TRIALS, episodes)) + rng.normal(0, NOISE_SD, (TRIALS, episodes))
    lows = np.array([bootstrap_ci(x[t], iqm, N_BOOT, seed=t)["ci_low"] for t in range(TRIALS)])
    miss = (lows > 400).mean()
    print(f"\nE={episodes}: deployed IQM CI lower bound above the truth {miss:.3f} (nominal 0.025)")
    assert miss <= 0.05


# --- the gate: rules ----------------------------------------------------------------------------


def test_gate_rules():
    kw = {"min_return": 475.0, "margin": 10.0}
    good = gate_decision(np.full((5, 100), 500.0), 0, None, **kw)
    assert good["passed"] and good["reason"] == "passed" and "diff" not in good
    bad = gate_decision(np.full((5, 100), 300.0), 2, None, **kw)
    assert not bad["passed"] and "min_return 475.0" in bad["reason"]
    assert "deployed policy: IQM CI lower bound 300.00 < min_return 475.0" in bad["reason"]
    assert "recipe: 0 of 5 seeds reach min_return 475.0 (needs 5)" in bad["reason"]
    champion = np.full(100, 500.0)
    worse = gate_decision(np.full((5, 100), 480.0), 0, champion, **kw, mode="non_inferior")
    assert not worse["passed"] and "champion" in worse["reason"] and "-10.0" in worse["reason"]
    assert worse["diff"] == pytest.approx(-20)
    assert gate_decision(np.full((5, 100), 495.0), 0, champion, **kw, mode="non_inferior")["passed"]
    same = gate_decision(np.full((5, 100), 500.0), 0, champion, **kw, mode="superior")
    assert not same["passed"] and "champion (superior)" in same["reason"]


def test_gate_rejects_bad_arguments():
    r, kw = np.full((5, 20), 500.0), {"min_return": 475.0, "margin": 10.0}
    with pytest.raises(ValueError, match="mode"):
        gate_decision(r, 0, None, **kw, mode="better")
    with pytest.raises(ValueError, match="champion_returns"):
        gate_decision(r, 0, np.full(19, 500.0), **kw)
    for index in (5, -1):
        with pytest.raises(ValueError, match="candidate_index"):
            gate_decision(r, index, None, **kw)
    with pytest.raises(ValueError, match="candidate_index"):
        gate_decision(r, 1.5, None, **kw)
    with pytest.raises(ValueError, match="margin"):
        gate_decision(r, 0, None, min_return=475.0, margin=-1.0)
    with pytest.raises(ValueError, match="finite"):
        gate_decision(np.full((5, 20), np.nan), 0, None, **kw)


def test_gate_output_is_json_able():
    import json

    rng = np.random.default_rng(0)
    d = gate_decision(rng.normal(480, 10, (5, 50)), 3, rng.normal(470, 10, 50), min_return=400, margin=5)
    assert json.loads(json.dumps(d)) == d
    assert d["seeds"] == 5 and d["episodes"] == 50 and d["candidate_index"] == 3 and len(d["seed_iqms"]) == 5
    assert d["ci_low"] <= d["iqm"] <= d["ci_high"] and d["mean_ci_low"] <= d["mean"] <= d["mean_ci_high"]
    assert d["recipe_ci_low"] <= d["recipe_iqm"] <= d["recipe_ci_high"]
    assert d["diff_ci_low"] <= d["diff"] <= d["diff_ci_high"]


def test_recipe_check_stops_a_lucky_seed():
    rng = np.random.default_rng(4)
    lucky = np.vstack([500 - rng.exponential(2, (1, 100)), 300 + rng.normal(0, 20, (4, 100))])
    d = gate_decision(lucky, 0, None, min_return=475, margin=10)
    assert d["ci_low"] >= 475 and d["mean_ci_low"] >= 475  # the deployed seed alone would pass
    assert not d["passed"] and d["reason"] == "recipe: 1 of 5 seeds reach min_return 475.0 (needs 5)"
    assert d["seeds_reaching"] == 1 and d["recipe_ci_low"] < 475
    few = gate_decision(np.full((3, 100), 500.0), 0, None, min_return=475, margin=10)
    assert not few["passed"] and few["reason"] == "recipe: 3 seeds trained, the gate needs >= 5 (train.seeds)"
    one = gate_decision(np.full(100, 500.0), 0, None, min_return=475, margin=10)
    assert not one["passed"] and "1 seed trained" in one["reason"] and "train.seeds" in one["reason"]
    assert gate_decision(np.full(100, 500.0), 0, None, min_return=475, margin=10, min_seeds=1)["passed"]


# --- the gate: error rates by simulation --------------------------------------------------------


def _worlds(rng, episodes: int, recipe_mean: float = 400.0, seeds: int = 5, final_episodes: int = 10):
    """TRIALS simulated trainings: true seed means, the deployed seed, and the gate's returns."""
    true = recipe_mean + rng.normal(0, SEED_SD, (TRIALS, seeds))
    final = (
        true[..., None]
        + rng.normal(0, DIFFICULTY_SD, (TRIALS, 1, final_episodes))
        + rng.normal(0, NOISE_SD, (TRIALS, seeds, final_episodes))
    )
    deployed = final.mean(axis=-1).argmax(axis=-1)  # best on the final eval, not on the gate's episodes
    difficulty = rng.normal(0, DIFFICULTY_SD, (TRIALS, 1, episodes))  # the gate's fresh start states
    returns = true[..., None] + difficulty + rng.normal(0, NOISE_SD, (TRIALS, seeds, episodes))
    deployed_true = true[np.arange(TRIALS), deployed]
    return returns, deployed, deployed_true, difficulty[:, 0]


def _promotion_rate(returns, deployed, champion, **kw) -> tuple[float, np.ndarray]:
    ds = [
        gate_decision(
            returns[t],
            int(deployed[t]),
            None if champion is None else champion[t],
            n_boot=N_BOOT,
            seed=t,
            **kw,
        )
        for t in range(TRIALS)
    ]
    return float(np.mean([d["passed"] for d in ds])), np.array([d.get("diff_ci_low", np.nan) for d in ds])


def _champion(rng, true_mean, difficulty):
    return true_mean[:, None] + difficulty + rng.normal(0, NOISE_SD, difficulty.shape)


def test_superior_gate_false_promotion_and_power():
    rng = np.random.default_rng(11)
    returns, deployed, deployed_true, difficulty = _worlds(rng, 100)
    # champion exactly as good as the deployed seed (its seed-to-seed luck included)
    equal, _ = _promotion_rate(
        returns, deployed, _champion(rng, deployed_true, difficulty), min_return=0, margin=10, mode="superior"
    )
    # deployed policy truly 30 better than the champion
    better, _ = _promotion_rate(
        returns,
        deployed,
        _champion(rng, deployed_true - 30, difficulty),
        min_return=0,
        margin=10,
        mode="superior",
    )
    print(
        f"\nsuperior, E=100: equal promoted {equal:.3f} (<= 0.05), +30 better promoted {better:.3f} (>= 0.9)"
    )
    assert equal <= 0.05
    assert better >= 0.9


def test_non_inferior_gate_false_promotion_and_power():
    margin = 10.0
    rng = np.random.default_rng(12)
    returns, deployed, deployed_true, difficulty = _worlds(rng, 100)
    kw = {"min_return": 0, "margin": margin, "mode": "non_inferior"}
    worse, _ = _promotion_rate(returns, deployed, _champion(rng, deployed_true + margin, difficulty), **kw)
    equal, diff_low = _promotion_rate(returns, deployed, _champion(rng, deployed_true, difficulty), **kw)
    # the other criteria cannot fail here (min_return 0), so the promotion rate at another margin is
    # read off the same gates' difference CI
    at_15 = float((diff_low >= -15).mean())
    print(
        f"\nnon_inferior, E=100: truly worse by the margin {margin:g} promoted {worse:.3f} (<= 0.05); "
        f"equal promoted {equal:.3f} at margin 10, {at_15:.3f} at margin 15"
    )
    assert worse <= 0.05
    # with per-policy episode noise sd 25 the paired difference has sd 35/episode, SE 3.5 at E=100: the
    # lower bound sits ~6.9 below the estimate, so an equal candidate clears -10 about 81% of the time
    # (normal theory) and -15 about 99%
    assert equal >= 0.7
    assert at_15 >= 0.9


@pytest.mark.parametrize("episodes", [100, 20])
def test_early_failure_candidate_is_not_promoted(episodes):
    # returns 20 (early failure) on 10% of start states, 500 otherwise (true mean 452, IQM 500); all 5
    # seeds alike; no champion; min_return 475. Failing start states are failing for every seed.
    rng = np.random.default_rng(13 + episodes)
    fails = rng.random((TRIALS, 1, episodes)) < 0.1
    returns = np.broadcast_to(np.where(fails, 20.0, 500.0), (TRIALS, 5, episodes))
    ds = [
        gate_decision(returns[t], 0, None, min_return=475, margin=10, n_boot=N_BOOT, seed=t)
        for t in range(TRIALS)
    ]
    passed = np.array([d["passed"] for d in ds])
    no_failure_seen = ~fails[:, 0].any(axis=-1)
    floor = 0.9**episodes
    print(
        f"\nearly failure, E={episodes}: promoted {passed.mean():.3f}; gate saw no failure in "
        f"{no_failure_seen.mean():.3f} (expected 0.9^E = {floor:.3f})"
    )
    assert all("mean CI lower bound" in d["reason"] for d, p in zip(ds, passed, strict=True) if not p)
    if episodes == 100:
        assert passed.mean() <= 0.05
    else:
        # E=20 cannot meet 5%: in 0.9^20 = 12% of gates none of the 20 start states is a failing one,
        # and then every row is a perfect 500 that no statistic can tell from a perfect policy. The gate
        # must pass ONLY then (one observed failure already sinks the mean's lower bound).
        assert np.array_equal(passed, no_failure_seen)


def test_probability_of_improvement_counts_paired_wins_and_half_ties():
    from ppo.stats import probability_of_improvement

    a = np.array([3.0, 2.0, 5.0, 1.0])
    b = np.array([1.0, 2.0, 6.0, 0.0])
    assert probability_of_improvement(a, b) == pytest.approx((2 + 0.5) / 4)  # wins on 0 and 3, tie on 1
    assert probability_of_improvement(a, a) == 0.5
    assert probability_of_improvement(a + 10, a) == 1.0
    assert probability_of_improvement(b, a) == pytest.approx(1 - (2 + 0.5) / 4)  # antisymmetric
    rows = np.stack([a, b])  # leading axes are kept (bootstrap rows)
    assert probability_of_improvement(rows, b).tolist() == pytest.approx([0.625, 0.5])
    with pytest.raises(ValueError, match="pair episode for episode"):
        probability_of_improvement(a, b[:3])


def test_the_gate_reports_the_probability_of_improvement_over_the_champion():
    from ppo.stats import gate_decision

    rng = np.random.default_rng(3)
    champion = rng.normal(100, 10, 200)
    better = champion + rng.normal(5, 2, 200)  # the same start states: better on almost every one
    d = gate_decision(better[None], 0, champion, min_return=0.0, margin=5.0, min_seeds=1)
    assert d["improvement_probability"] == pytest.approx(np.mean(better > champion))
    assert (
        d["improvement_probability_ci_low"]
        <= d["improvement_probability"]
        <= d["improvement_probability_ci_high"]
    )
    assert d["improvement_probability_ci_low"] > 0.9
    alone = gate_decision(better[None], 0, None, min_return=0.0, margin=5.0, min_seeds=1)
    assert "improvement_probability" not in alone  # nothing to compare against
