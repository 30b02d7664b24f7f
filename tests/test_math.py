"""PPO math against plain-Python references and hand-computed values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppo.config import build_config
from ppo.losses import gae, ppo_loss
from ppo.update import make_optimizer


def gae_reference(rewards, values, next_values, terminated, dones, gamma, lam):
    """A_t = sum_l (γλ)^l δ_{t+l}, summed until (and including) the step where the episode ends."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, factor = 0.0, 1.0
            for k in range(t, T):
                delta = rewards[k, n] + gamma * (1 - terminated[k, n]) * next_values[k, n] - values[k, n]
                total += factor * delta
                if dones[k, n]:
                    break
                factor *= gamma * lam
            adv[t, n] = total
    return adv, adv + values


def test_gae_matches_plain_python_with_terminations_and_truncations():
    rng = np.random.default_rng(0)
    T, N = 40, 6
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    terminated = rng.random((T, N)) < 0.1
    truncated = (rng.random((T, N)) < 0.1) & ~terminated
    dones = terminated | truncated
    adv, ret = gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                   jnp.asarray(next_values, jnp.float32), jnp.asarray(terminated), jnp.asarray(dones), 0.97, 0.9)
    ref_adv, ref_ret = gae_reference(rewards, values, next_values, terminated, dones, 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-4, atol=1e-4)


def test_td_error_bootstraps_truncation_but_not_termination():
    # one step each: reward 1, V(s)=2, V(s')=10, gamma 0.9, lambda irrelevant (single step)
    r, v, nv = jnp.ones((1, 3)), jnp.full((1, 3), 2.0), jnp.full((1, 3), 10.0)
    terminated = jnp.array([[False, True, False]])
    dones = jnp.array([[False, True, True]])  # env 2 truncated
    adv, _ = gae(r, v, nv, terminated, dones, 0.9, 0.95)
    np.testing.assert_allclose(np.asarray(adv[0]), [1 + 9 - 2, 1 - 2, 1 + 9 - 2], rtol=1e-6)


def test_ppo_loss_pieces_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]]))
    actions = jnp.array([0, 1])
    old_log_probs = jnp.log(jnp.array([0.25, 0.4]))  # ratios 2.0 and 0.5
    advantages = jnp.array([1.0, -1.0])
    values, returns = jnp.array([1.0, 2.0]), jnp.array([2.0, 0.0])
    info = ppo_loss(logits, values, actions, old_log_probs, advantages, returns, clip_eps=0.2,
                    value_coef=0.5, entropy_coef=0.01, normalize_advantages=False)
    # sample 0: min(2*1, 1.2*1) = 1.2 ; sample 1: min(0.5*-1, 0.8*-1) = -0.8 ; policy loss = -(0.4)/2
    assert float(info.policy) == pytest.approx(-0.2, abs=1e-6)
    assert float(info.value) == pytest.approx((1 + 4) / 2, abs=1e-6)
    h0, h1 = np.log(2), -(0.8 * np.log(0.8) + 0.2 * np.log(0.2))
    assert float(info.entropy) == pytest.approx((h0 + h1) / 2, abs=1e-6)
    assert float(info.clip_fraction) == pytest.approx(1.0)
    kl = ((2 - 1) - np.log(2) + (0.5 - 1) - np.log(0.5)) / 2
    assert float(info.approx_kl) == pytest.approx(kl, abs=1e-6)
    assert float(info.total) == pytest.approx(-0.2 + 0.5 * 2.5 - 0.01 * (h0 + h1) / 2, abs=1e-6)


def test_advantages_are_normalised_per_minibatch():
    logits = jnp.zeros((4, 2))
    a = ppo_loss(logits, jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.log(jnp.full(4, 0.5)),
                 jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.zeros(4), 0.2, 0.0, 0.0)
    b = ppo_loss(logits, jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.log(jnp.full(4, 0.5)),
                 jnp.array([10.0, 20.0, 30.0, 40.0]), jnp.zeros(4), 0.2, 0.0, 0.0)
    assert float(a.policy) == pytest.approx(float(b.policy), abs=1e-6)
    assert float(a.policy) == pytest.approx(0.0, abs=1e-6)  # ratio 1, normalised advantages have mean 0


def test_gradients_are_clipped_to_max_grad_norm_before_adam():
    cfg = build_config({"ppo": {"max_grad_norm": 0.5}})
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}  # global norm 5 -> scaled by 0.1
    _, state = tx.update(grads, tx.init(params), params)
    adam_state = state[1][0]
    np.testing.assert_allclose(np.asarray(adam_state.mu["w"]), 0.1 * np.array([0.3, 0.4, 0, 0]), rtol=1e-5)
    assert float(optax.tree.norm(grads)) == pytest.approx(5.0)
