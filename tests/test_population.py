"""Populations (ppo/population.py): members that differ in shape-free hyperparameters train as one
program, with the numbers of separate training."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppo import PPOTrainer
from ppo.config import ConfigError, build_config
from ppo.evaluate import evaluate_params_list
from ppo.population import member_config, train_population, train_together
from tests.helpers import small_config

UPDATES = 10  # two chunks of five


def _config(**overrides):
    return small_config(**{"train.max_env_steps": 128 * UPDATES, **overrides})


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_population_of_one_is_plain_training_bit_for_bit(ppo_home):
    config = _config(**{"train.seeds": [0, 1]})
    trainer = PPOTrainer(config=config)
    plain = trainer.train()
    result = train_population(config, [{}])
    assert result.returns.shape == (1, 2, UPDATES) and result.env_steps == 128 * UPDATES
    assert result.results[0]["final_eval"] == plain["final_eval"]
    for seed in range(2):
        for ours, plain in zip(
            _leaves(result.params[0][seed]), _leaves(trainer.seed_params[seed]), strict=True
        ):
            np.testing.assert_array_equal(ours, plain)


def test_members_with_different_hyperparameters_equal_separate_runs(ppo_home):
    members = [{"ppo.learning_rate": 1e-3}, {"learning_rate": 3e-3, "clip_epsilon": 0.1, "gamma": 0.9}]
    config = _config(**{"train.seeds": [4]})
    result = train_population(config, members)
    assert result.returns.shape == (2, 1, UPDATES)
    finals = []
    for m, member in enumerate(members):
        alone = PPOTrainer(
            config=_config(
                **{
                    "train.seeds": [4],
                    **{k if k.startswith("ppo.") else f"ppo.{k}": v for k, v in member.items()},
                }
            )
        )
        alone_result = alone.train()
        # the members' final evaluations, played together, face the episodes each plays alone
        assert result.results[m]["final_eval"]["gym_seeds"] == alone_result["final_eval"]["gym_seeds"]
        own = evaluate_params_list(result.params[m], "CartPole-v1", *alone.final_evaluation())
        assert result.results[m]["final_eval"]["returns"] == own.ravel().tolist()
        for ours, theirs in zip(_leaves(result.params[m][0]), _leaves(alone.seed_params[0]), strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-6)
        finals.append(_leaves(result.params[m][0]))
    # the members really differ (the rows did not all train with the first member's values)
    assert any(not np.allclose(a, b) for a, b in zip(*finals, strict=True))


@pytest.mark.parametrize(
    "member,field",
    [
        ({"ppo.hidden_sizes": [8]}, "ppo.hidden_sizes"),
        ({"env.num_envs": 4}, "env.num_envs"),
        ({"ppo.gamma": 1.5}, "gamma"),
    ],
)
def test_a_member_may_change_only_shape_free_hyperparameters_within_their_ranges(member, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        train_population(_config(), [{}, member])


def test_a_population_needs_a_step_budget():
    with pytest.raises(ConfigError, match="max_env_steps"):
        train_population(_config(**{"train.max_env_steps": None}), [{}])


def test_a_diverged_member_fails_its_own_run_and_the_others_train_on(ppo_home, monkeypatch):
    """Member 1 starts from NaN weights (a fault injected where the population's state is placed): its
    first update's loss is NaN, so it stops with NonFiniteLossError and its MLflow run is FAILED, while
    member 0 trains to the end exactly as it would alone."""
    from ppo import tracking
    from ppo.runtime import Runtime
    from ppo.tracking import MLflowLogger
    from ppo.trainer import NonFiniteLossError

    place = Runtime.place

    def poisoned(self, state):
        if self.members == 2:  # the population's initial state: member 1 is row 1 (one seed each)
            nan = jax.tree.map(lambda x: np.concatenate([x[:1], np.full_like(x[1:], np.nan)]), state.params)
            state = state.replace(params=nan)
        return place(self, state)

    monkeypatch.setattr(Runtime, "place", poisoned)
    config = _config(**{"train.seeds": [3], "tracking.enabled": True})
    configs = [config, member_config(config, {"ppo.learning_rate": 3e-3})]
    loggers = [MLflowLogger.from_config(c, run_name=f"member-{i}") for i, c in enumerate(configs)]
    trainers = [PPOTrainer(config=c, logger=lg) for c, lg in zip(configs, loggers, strict=True)]
    ok, bad = train_together(trainers)
    assert isinstance(bad, NonFiniteLossError) and "non-finite loss at update 1 " in str(bad)
    client = tracking.client()
    assert client.get_run(loggers[1].run_id).info.status == "FAILED"
    assert client.get_run(loggers[0].run_id).info.status == "FINISHED"
    assert ok["env_steps"] == 128 * UPDATES and ok["run_id"] == loggers[0].run_id

    alone = PPOTrainer(config=build_config(config.to_dict(), {"tracking.enabled": False}))
    expected = alone.train()
    assert ok["final_eval"]["returns"] == expected["final_eval"]["returns"]
    for ours, theirs in zip(_leaves(trainers[0].seed_params[0]), _leaves(alone.seed_params[0]), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-6)


def test_members_of_different_shapes_are_refused_with_the_fields_named():
    trainers = [PPOTrainer(config=_config()), PPOTrainer(config=_config(**{"ppo.epochs_per_update": 4}))]
    with pytest.raises(ConfigError, match=r"member 1 differs from member 0 in ppo\.epochs_per_update"):
        train_together(trainers)
