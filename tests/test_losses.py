"""Advantage normalisation edge cases (the rest of the PPO math is in test_math.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ppo.config import ConfigError, build_config
from ppo.losses import normalize, ppo_loss


@pytest.mark.parametrize("value", [0.37, -12.5, 480.0, 1e-3])
def test_equal_advantages_normalise_to_zero_in_float32(value):
    adv = jnp.full(64, value, jnp.float32)
    np.testing.assert_array_equal(np.asarray(normalize(adv)), np.zeros(64))
    # so the policy loss of a minibatch with no advantage signal is exactly 0 whatever the ratios
    logits = jnp.stack([jnp.linspace(-1, 1, 64), jnp.zeros(64)], axis=1)
    info = ppo_loss(
        logits, jnp.zeros(64), jnp.zeros(64, jnp.int32), jnp.full(64, -0.9), adv, jnp.zeros(64), 0.2, 0.0, 0.0
    )
    assert float(info.policy) == 0.0


def test_real_spread_normalises_to_mean_zero_std_one():
    adv = jnp.asarray(np.random.default_rng(0).normal(3.0, 0.01, 256), jnp.float32)
    out = np.asarray(normalize(adv))
    assert abs(out.mean()) < 1e-4 and out.std() == pytest.approx(1.0, abs=1e-4)


def test_minibatch_of_one_is_refused_with_normalisation():
    with pytest.raises(ConfigError, match="never update"):
        build_config({"ppo": {"batch_size": 64, "minibatch_size": 1}})
    cfg = build_config({"ppo": {"batch_size": 64, "minibatch_size": 1, "normalize_advantages": False}})
    assert cfg.ppo.minibatch_size == 1
