"""Population-based training (ppo/pbt.py): an exploit step copies the donor's weights, optimiser state and
recipe into the worst members' rows, perturbs the recipe as specified, and leaves everything else alone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppo.pbt import PBT, Schedule, bounds, exploit, fitness
from ppo.program import HParams, make_program
from tests.helpers import small_config

SEEDS = 2


def _population(rates):
    """A real population state (4 members x 2 seeds) on the host, member m with learning rate rates[m]."""
    config = small_config(**{"train.seeds": list(range(SEEDS))})
    program = make_program(config, rows=len(rates) * SEEDS)
    hparams = [HParams.of(config.ppo, learning_rate=r) for r in rates for _ in range(SEEDS)]
    seeds = np.asarray([s for _ in rates for s in range(SEEDS)], np.uint32)
    return jax.device_get(program.init(seeds, hparams))


def _rows(tree, member):
    return [np.asarray(x)[member * SEEDS : (member + 1) * SEEDS] for x in jax.tree.leaves(tree)]


def test_an_exploit_step_copies_the_donor_and_perturbs_as_specified():
    rates = [1e-3, 2e-3, 3e-3, 4e-3]
    state = _population(rates)

    # distinct weights and optimiser state per row, so a copy is visible
    def by_row(tree):
        return jax.tree.map(
            lambda x: x + np.arange(len(x), dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1)), tree
        )

    state = state.replace(params=by_row(state.params), opt_state=by_row(state.opt_state))
    scores = np.array([10.0, 40.0, 20.0, 30.0])  # member 0 is the worst, member 1 the best
    pbt = PBT(interval=5, fields=("learning_rate", "clip_epsilon"), fraction=0.25, factors=(0.8, 1.2))
    new, events = exploit(state, scores, SEEDS, pbt, np.random.default_rng(0), update=5)

    assert [(e.member, e.donor, e.update) for e in events] == [(0, 1, 5)]
    # the recipient's weights and optimiser state are the donor's, seed by seed
    for ours, donor in zip(_rows(new.params, 0), _rows(state.params, 1), strict=True):
        np.testing.assert_array_equal(ours, donor)
    opt_new, opt_donor = new.opt_state, state.opt_state
    np.testing.assert_array_equal(
        np.asarray(opt_new.count)[:SEEDS], np.asarray(opt_donor.count)[SEEDS : 2 * SEEDS]
    )
    for ours, donor in zip(_rows(opt_new.inner_state, 0), _rows(opt_donor.inner_state, 1), strict=True):
        np.testing.assert_array_equal(ours, donor)
    # its recipe is the donor's, the perturbed fields multiplied by one of the factors
    lr = float(np.asarray(new.hp.learning_rate)[0])
    clip = float(np.asarray(new.hp.clip_epsilon)[0])
    assert any(np.isclose(lr, rates[1] * f, rtol=1e-6) for f in (0.8, 1.2)), lr
    assert any(np.isclose(clip, 0.2 * f, rtol=1e-6) for f in (0.8, 1.2)), clip
    assert events[0].hparams == pytest.approx({"learning_rate": lr, "clip_epsilon": clip})
    np.testing.assert_array_equal(np.asarray(new.hp.learning_rate)[:SEEDS], [lr, lr])
    # the optimiser's own copy of the rate follows
    np.testing.assert_allclose(np.asarray(opt_new.hyperparams["learning_rate"])[:SEEDS], [lr, lr])
    # what a member keeps: its envs, observations, RNG key, episode books, update count
    for field in ("env_state", "obs", "key", "stats", "update"):
        for ours, before in zip(_rows(getattr(new, field), 0), _rows(getattr(state, field), 0), strict=True):
            np.testing.assert_array_equal(ours, before)
    # every other member is untouched
    for m in (1, 2, 3):
        for ours, before in zip(_rows(new, m), _rows(state, m), strict=True):
            np.testing.assert_array_equal(ours, before)


def test_exploit_respects_ranges_eligibility_and_ties():
    state = _population([0.9, 0.9, 0.9, 0.9])
    pbt = PBT(interval=5, fields=("learning_rate", "gamma"), fraction=0.5, factors=(1.5,))
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    new, events = exploit(state, scores, SEEDS, pbt, np.random.default_rng(1), update=10)
    assert sorted(e.member for e in events) == [0, 1] and all(e.donor in (2, 3) for e in events)
    # 0.9 x 1.5 and 0.99 x 1.5 leave the valid ranges: kept at their upper bounds (both <= 1)
    assert all(e.hparams == {"learning_rate": bounds("learning_rate")[1], "gamma": 1.0} for e in events)
    # a member that stopped training is not a recipient; nobody copies from an equal score
    eligible = [False, True, True, True]
    _, events = exploit(state, scores, SEEDS, pbt, np.random.default_rng(1), 10, eligible=eligible)
    assert [e.member for e in events] == [1]
    assert exploit(state, np.array([5.0] * 4), SEEDS, pbt, np.random.default_rng(1), 10)[1] == []


def test_fitness_is_the_mean_window_return_over_a_members_seeds():
    state = _population([1e-3, 1e-3])
    window = np.asarray(state.stats.window).copy()
    window[0, :2], window[1, :2], window[2, :2] = [10, 20], [30, 50], [7, 9]
    episodes = np.array([2, 2, 2, 0])
    state = state.replace(stats=state.stats._replace(window=window, episodes=episodes))
    np.testing.assert_allclose(fitness(state, 2, SEEDS, 10), [27.5, 8.0])
    state = state.replace(stats=state.stats._replace(episodes=np.array([2, 2, 0, 0])))
    assert fitness(state, 2, SEEDS, 10)[1] == -np.inf


def test_a_diverged_member_is_never_a_donor():
    """Its frozen weights may be NaN while its last training returns look best: the schedule ranks it
    last, so the worst member copies the best member that is still alive."""
    state = _population([1e-3, 2e-3, 3e-3, 4e-3])
    window = np.asarray(state.stats.window).copy()
    for row, value in enumerate([10, 10, 90, 90, 30, 30, 50, 50]):  # members score 10, 90, 30, 50
        window[row, :2] = value
    state = state.replace(
        stats=state.stats._replace(window=window, episodes=np.full(8, 2)),
        update=np.full(8, 5, np.int32),
    )
    schedule = Schedule(PBT(interval=5, fields=("learning_rate",)), members=4, seeds=SEEDS, window=10)
    everyone = np.ones(4, bool)
    schedule(state, everyone, alive=np.array([True, False, True, True]))  # member 1 diverged
    assert [(e.member, e.donor) for e in schedule.events] == [(0, 3)]
    alive_all = Schedule(PBT(interval=5, fields=("learning_rate",)), members=4, seeds=SEEDS, window=10)
    alive_all(state, everyone)
    assert [(e.member, e.donor) for e in alive_all.events] == [(0, 1)]
