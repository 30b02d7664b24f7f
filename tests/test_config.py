"""Config model: reference defaults, overrides, and bad input named precisely."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ppo.config import (
    Config,
    ConfigError,
    build_config,
    flat_kwargs_to_overrides,
    load_config,
    parse_overrides,
)
from tests.helpers import ROOT


def test_defaults_are_the_reference_table():
    c = Config()
    t, p = c.train, c.ppo
    assert (t.max_episodes, c.env.max_steps_per_episode, t.convergence_window) == (1000, 500, 100)
    assert (t.early_stopping_patience, t.eval_frequency, t.eval_episodes) == (10, 50, 10)
    assert (p.learning_rate, p.clip_epsilon, p.gamma, p.gae_lambda) == (3e-4, 0.2, 0.99, 0.95)
    assert (p.entropy_coef, p.value_coef, p.max_grad_norm, p.epochs_per_update) == (0.01, 0.5, 0.5, 10)
    assert (p.batch_size, p.minibatch_size) == (64, 64)


def test_seed_defaults_yaml_is_the_builtin_default():
    # except target_reward: the reference's 195 is written there; built in, it is the env's threshold (475)
    seed = load_config(ROOT / "configs" / "seed-defaults.yaml")
    assert seed.train.target_reward == 195.0 and Config().train.target_reward == 475.0
    assert (
        seed.model_copy(update={"train": seed.train.model_copy(update={"target_reward": 475.0})}) == Config()
    )


@pytest.mark.parametrize("name", ["cartpole.yaml", "acrobot.yaml", "seed-defaults.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.ppo.batch_size % cfg.env.num_envs == 0


def test_overrides_and_reference_keyword_names():
    cfg = load_config(
        ROOT / "configs" / "cartpole.yaml", parse_overrides(["ppo.learning_rate=2e-3", "train.seeds=[1, 2]"])
    )
    assert cfg.ppo.learning_rate == 2e-3 and cfg.train.seeds == (1, 2)
    assert flat_kwargs_to_overrides(
        {"max_episodes": 5, "clip_epsilon": 0.1, "max_steps_per_episode": 200}
    ) == {"train.max_episodes": 5, "ppo.clip_epsilon": 0.1, "env.max_steps_per_episode": 200}
    assert cfg.config_hash() != load_config(ROOT / "configs" / "cartpole.yaml").config_hash()
    assert cfg.model_name == "ppo-cartpole" and cfg.experiment_name == "ppo-cartpole"
    assert build_config({"env": {"id": "Acrobot-v1", "num_envs": 4}}).model_name == "ppo-acrobot"


BAD = [
    ({"ppo": {"learning_rate": -1}}, ["ppo.learning_rate", "-1", "allowed"]),
    ({"ppo": {"clip_epsilon": 1.5}}, ["ppo.clip_epsilon", "1.5"]),
    ({"ppo": {"gamma": 1.2}}, ["ppo.gamma", "1.2", "0.0 .. 1.0"]),
    ({"ppo": {"gae_lambda": "high"}}, ["ppo.gae_lambda", "high"]),
    ({"ppo": {"epochs_per_update": 0}}, ["ppo.epochs_per_update", "0"]),
    ({"ppo": {"batch_size": 64, "minibatch_size": 48}}, ["minibatch_size (48) must divide batch_size (64)"]),
    ({"ppo": {"batch_size": 64, "minibatch_size": 128}}, ["minibatch_size (128) must be <= batch_size (64)"]),
    ({"env": {"num_envs": 5}}, ["env.num_envs (5) must divide ppo.batch_size (64)"]),
    ({"env": {"id": "Pong-v0"}}, ["env.id", "Pong-v0", "CartPole-v1"]),
    ({"train": {"max_episodes": 0}}, ["train.max_episodes", "0"]),
    ({"train": {"seeds": [1, 1]}}, ["seeds must be distinct"]),
    ({"train": {"seeds": []}}, ["train.seeds"]),
    ({"train": {"eval_episodes": 2.5}}, ["train.eval_episodes", "2.5"]),
    ({"train": {"convergence_windw": 10}}, ["train.convergence_windw", "unknown key", "convergence_window"]),
    ({"optimizer": {"lr": 1}}, ["optimizer", "unknown key"]),
    ({"ppo": {"anneal_lr": True}}, ["anneal_lr needs train.max_env_steps"]),
    ({"ppo": {"hidden_sizes": [64, 0]}}, ["hidden_sizes", "[64, 0]"]),
    ({"gate": {"mode": "better"}}, ["gate.mode", "better", "non_inferior"]),
    ({"ppo": {"max_grad_norm": 0}}, ["ppo.max_grad_norm", "0"]),
    ({"train": {"max_env_steps": 10}}, ["train.max_env_steps (10) must be >= ppo.batch_size (64)"]),
]


@pytest.mark.parametrize("data,expected", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_names_the_field(data, expected):
    with pytest.raises(ConfigError) as e:
        build_config(data)
    for piece in expected:
        assert piece in str(e.value), (piece, str(e.value))


@pytest.mark.parametrize(
    "item,expected",
    [
        ("ppo.nope=1", "unknown field 'nope' in ppo"),
        ("nope.lr=1", "unknown section 'nope'"),
        ("learning_rate", "expected key=value"),
        ("ppo=1", "expected <section>.<field>"),
    ],
)
def test_bad_override(item, expected):
    with pytest.raises(ConfigError, match=expected):
        build_config({}, parse_overrides([item]))


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_cli_rejects_bad_config_before_training(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"ppo": {"learning_rate": 5.0}}))
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "ppo.cli", "train", "-c", str(cfg), "--no-mlflow"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PPO_HOME": str(home)},
    )
    assert proc.returncode == 2
    assert "ppo.learning_rate" in proc.stderr and "5.0" in proc.stderr
    assert not (home / "checkpoints").exists()


@pytest.mark.parametrize("env_id,threshold", [("CartPole-v1", 475.0), ("Acrobot-v1", -100.0)])
def test_gate_and_target_default_to_the_envs_reward_threshold(env_id, threshold):
    import gymnasium

    assert gymnasium.spec(env_id).reward_threshold == threshold
    cfg = build_config({"env": {"id": env_id, "num_envs": 4}})
    assert cfg.gate.min_return == threshold and cfg.train.target_reward == threshold
    # set explicitly, they win
    cfg = build_config(
        {"env": {"id": env_id, "num_envs": 4}, "gate": {"min_return": 1.0}, "train": {"target_reward": 2.0}}
    )
    assert (cfg.gate.min_return, cfg.train.target_reward) == (1.0, 2.0)
    # the reference table's target (seed-defaults.yaml) is kept where it is written
    assert load_config(ROOT / "configs" / "seed-defaults.yaml").train.target_reward == 195.0


def test_acrobot_config_gates_on_acrobots_threshold():
    # it used to inherit CartPole's 475 and could never pass its own gate
    cfg = load_config(ROOT / "configs" / "acrobot.yaml")
    assert cfg.gate.min_return == -100.0 and len(cfg.train.seeds) >= cfg.gate.min_seeds
    cart = load_config(ROOT / "configs" / "cartpole.yaml")
    assert cart.gate.min_return == 475.0 and len(cart.train.seeds) >= cart.gate.min_seeds


def test_an_absolute_margin_is_refused_with_the_relative_meaning_explained():
    with pytest.raises(ConfigError, match=r"gate.margin: 10.0 is a fraction of the env's return range.*0.02"):
        build_config({"gate": {"margin": 10}})
    with pytest.raises(ConfigError, match="unknown key 'eval_seed'"):
        build_config({"gate": {"eval_seed": 3}})  # the gate draws fresh start states per candidate now
