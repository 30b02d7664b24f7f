"""PPO math against plain-Python references and hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppo.advantages import gae
from ppo.config import build_config
from ppo.losses import ppo_loss
from ppo.program import HParams, make_optimizer


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
    T, N = 40, 8
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    # independent draws: terminated and truncated are both true on some steps (gymnax reports both when the
    # pole falls on the time limit's last step); a termination then wins (no bootstrap), the trace is cut
    terminated = rng.random((T, N)) < 0.15
    truncated = rng.random((T, N)) < 0.15
    terminated[:, 0] = truncated[:, 0] = False  # env 0: one trace over the whole rollout, nothing ends
    terminated[0, 1] = True  # env 1: an episode ends at t=0 (terminated) ...
    truncated[T - 1, 1] = True  # ... and one at t=T-1 (truncated)
    truncated[0, 2] = True  # env 2: truncated at t=0, terminated and truncated together at t=T-1
    terminated[T - 1, 2] = truncated[T - 1, 2] = True
    terminated[:, 3] = True  # env 3: every step ends an episode
    truncated[T - 1, 4], terminated[T - 1, 4] = True, False  # env 4: truncated on the last step
    dones = terminated | truncated
    both = terminated & truncated
    assert both.sum() >= 3 and both[1:-1].any()  # the case happens in the middle of rollouts too
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    adv, ret = gae(
        f32(rewards), f32(values), f32(next_values), jnp.asarray(terminated), jnp.asarray(dones), 0.97, 0.9
    )
    ref_adv, ref_ret = gae_reference(rewards, values, next_values, terminated, dones, 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, rtol=1e-4, atol=1e-4)
    # the endpoints by hand: a one-step episode at t=0, the last step of a rollout bootstraps (truncated or
    # still running) unless terminated, and nothing flows back across an episode end
    d = lambda t, n, boot: rewards[t, n] + 0.97 * boot * next_values[t, n] - values[t, n]  # noqa: E731
    assert float(adv[0, 1]) == pytest.approx(d(0, 1, 0), abs=1e-5)
    assert float(adv[0, 2]) == pytest.approx(d(0, 2, 1), abs=1e-5)
    assert float(adv[T - 1, 1]) == pytest.approx(d(T - 1, 1, 1), abs=1e-5)
    assert float(adv[T - 1, 2]) == pytest.approx(d(T - 1, 2, 0), abs=1e-5)
    assert float(adv[T - 1, 0]) == pytest.approx(d(T - 1, 0, 1), abs=1e-5)
    np.testing.assert_allclose(np.asarray(adv[:, 3]), rewards[:, 3] - values[:, 3], rtol=1e-5, atol=1e-5)


def test_td_error_bootstraps_truncation_but_not_termination():
    # one step each: reward 1, V(s)=2, V(s')=10, gamma 0.9, lambda irrelevant (single step)
    r, v, nv = jnp.ones((1, 4)), jnp.full((1, 4), 2.0), jnp.full((1, 4), 10.0)
    terminated = jnp.array([[False, True, False, True]])
    dones = jnp.array([[False, True, True, True]])  # env 2 truncated; env 3 terminated and truncated
    adv, _ = gae(r, v, nv, terminated, dones, 0.9, 0.95)
    np.testing.assert_allclose(np.asarray(adv[0]), [1 + 9 - 2, 1 - 2, 1 + 9 - 2, 1 - 2], rtol=1e-6)


def test_ppo_loss_pieces_by_hand():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]]))
    actions = jnp.array([0, 1])
    old_log_probs = jnp.log(jnp.array([0.25, 0.4]))  # ratios 2.0 and 0.5
    advantages = jnp.array([1.0, -1.0])
    values, returns = jnp.array([1.0, 2.0]), jnp.array([2.0, 0.0])
    info = ppo_loss(
        logits,
        values,
        actions,
        old_log_probs,
        advantages,
        returns,
        clip_eps=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
        normalize_advantages=False,
    )
    # sample 0: min(2*1, 1.2*1) = 1.2 ; sample 1: min(0.5*-1, 0.8*-1) = -0.8 ; policy loss = -(0.4)/2
    assert float(info.policy) == pytest.approx(-0.2, abs=1e-6)
    assert float(info.value) == pytest.approx((1 + 4) / 2, abs=1e-6)
    h0, h1 = np.log(2), -(0.8 * np.log(0.8) + 0.2 * np.log(0.2))
    assert float(info.entropy) == pytest.approx((h0 + h1) / 2, abs=1e-6)
    assert float(info.clip_fraction) == pytest.approx(1.0)
    kl = ((2 - 1) - np.log(2) + (0.5 - 1) - np.log(0.5)) / 2
    assert float(info.approx_kl) == pytest.approx(kl, abs=1e-6)
    assert float(info.total) == pytest.approx(-0.2 + 0.5 * 2.5 - 0.01 * (h0 + h1) / 2, abs=1e-6)


def _policy_loss_by_hand(ratios, advantages, clip_eps, batch_advantages=None):
    """-mean(min(r·Â, clip(r)·Â)) with Â = (A - mean) / std over ``batch_advantages`` (default: A itself)."""
    ref = advantages if batch_advantages is None else batch_advantages
    normalised = (advantages - ref.mean()) / ref.std()
    surrogate = np.minimum(ratios * normalised, np.clip(ratios, 1 - clip_eps, 1 + clip_eps) * normalised)
    return -surrogate.mean()


def _policy_loss(ratios, advantages, clip_eps):
    # two actions with equal logits: log π(a) = log 0.5, so old_log_prob = log(0.5 / r) gives ratio r exactly
    n = len(ratios)
    info = ppo_loss(
        jnp.zeros((n, 2)),
        jnp.zeros(n),
        jnp.zeros(n, jnp.int32),
        jnp.asarray(np.log(0.5 / np.asarray(ratios)), jnp.float32),
        jnp.asarray(advantages, jnp.float32),
        jnp.zeros(n),
        clip_eps,
        0.0,
        0.0,
    )
    return float(info.policy)


def test_advantages_are_normalised_per_minibatch():
    clip_eps = 0.2
    # ratios away from 1, some inside and some outside the clip range, so the loss depends on Â itself
    ratios_a, adv_a = np.array([1.1, 0.7, 1.5, 0.95]), np.array([1.0, -2.0, 3.0, 0.5])
    ratios_b, adv_b = np.array([0.9, 1.3, 1.05, 0.6]), np.array([100.0, 130.0, 110.0, 160.0])
    batch = np.concatenate([adv_a, adv_b])
    for ratios, adv in ((ratios_a, adv_a), (ratios_b, adv_b)):
        per_minibatch = _policy_loss_by_hand(ratios, adv, clip_eps)
        per_batch = _policy_loss_by_hand(ratios, adv, clip_eps, batch_advantages=batch)
        raw = -np.minimum(ratios * adv, np.clip(ratios, 1 - clip_eps, 1 + clip_eps) * adv).mean()
        assert min(abs(per_minibatch - per_batch), abs(per_minibatch - raw)) > 0.05  # the test can tell
        got = _policy_loss(ratios, adv, clip_eps)
        assert got == pytest.approx(per_minibatch, abs=1e-5), (got, per_minibatch, per_batch)
    # per-minibatch normalisation makes the loss invariant to a positive affine map of the minibatch's
    # advantages
    assert _policy_loss(ratios_b, 0.01 * adv_b - 7.0, clip_eps) == pytest.approx(
        _policy_loss(ratios_b, adv_b, clip_eps), abs=1e-5
    )
    # normalize_advantages=False uses the raw advantages
    info = ppo_loss(
        jnp.zeros((4, 2)),
        jnp.zeros(4),
        jnp.zeros(4, jnp.int32),
        jnp.asarray(np.log(0.5 / ratios_a), jnp.float32),
        jnp.asarray(adv_a, jnp.float32),
        jnp.zeros(4),
        clip_eps,
        0.0,
        0.0,
        normalize_advantages=False,
    )
    raw_a = -np.minimum(ratios_a * adv_a, np.clip(ratios_a, 0.8, 1.2) * adv_a).mean()
    assert float(info.policy) == pytest.approx(raw_a, abs=1e-5)


def test_the_update_calls_the_loss_on_minibatches_of_raw_advantages(monkeypatch):
    """Through the real update: ppo_loss sees minibatch-sized slices of the un-normalised GAE advantages (so
    the normalisation happens per minibatch inside it), every sample once per epoch."""
    import inspect

    import ppo.program

    real = ppo.program.ppo_loss
    traced, seen = [], []

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()
        traced.append(
            (tuple(bound.arguments["advantages"].shape), bool(bound.arguments["normalize_advantages"]))
        )
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), bound.arguments["advantages"], ordered=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo.program, "ppo_loss", spy)
    cfg = build_config(
        {
            "env": {"id": "CartPole-v1", "num_envs": 4, "max_steps_per_episode": 10},
            "ppo": {"batch_size": 32, "minibatch_size": 8, "epochs_per_update": 2, "hidden_sizes": [8]},
            "train": {"seeds": [0], "updates_per_chunk": 1},
            "tracking": {"enabled": False},
        }
    )
    program = ppo.program.make_program(cfg)
    state = program.init(np.array([0]))
    state, metrics = program.run_chunk(state, jnp.array([True]), 1)
    jax.block_until_ready(metrics)
    assert traced and all(t == ((8,), True) for t in traced), traced
    assert len(seen) == 2 * 4  # epochs x minibatches
    epochs = [np.sort(np.concatenate(seen[i * 4 : (i + 1) * 4])) for i in range(2)]
    np.testing.assert_array_equal(epochs[0], epochs[1])  # the same 32 samples, reshuffled
    assert len(np.unique(epochs[0])) > 16  # real, distinct advantages (not one repeated value)
    # raw GAE advantages: the batch is not already normalised (mean 0, std 1) before the loss sees it
    assert abs(epochs[0].mean()) > 1e-2 or abs(epochs[0].std() - 1) > 1e-2


def test_gradients_are_clipped_to_max_grad_norm_before_adam():
    lr, eps, max_norm = 1e-2, 1e-5, 0.5
    cfg = build_config({"ppo": {"max_grad_norm": max_norm, "learning_rate": lr, "adam_eps": eps}})
    tx = make_optimizer(HParams.of(cfg.ppo))
    adam = optax.adam(lr, eps=eps)
    params = {"b": jnp.zeros(2), "w": jnp.zeros(4)}
    steps = [  # global norms 50 (clipped), ~0.19 (kept), ~3.9 (clipped; per-leaf clipping would differ)
        {"b": jnp.array([0.0, 0.0]), "w": jnp.array([30.0, 40.0, 0.0, 0.0])},
        {"b": jnp.array([0.1, 0.05]), "w": jnp.array([0.1, 0.0, -0.1, 0.02])},
        {"b": jnp.array([3.0, -1.0]), "w": jnp.array([-1.0, 2.0, 0.5, 0.0])},
    ]
    norms = [float(optax.tree.norm(g)) for g in steps]
    assert norms[0] > max_norm and norms[1] < max_norm and norms[2] > max_norm
    state, clipped_state, raw_state = tx.init(params), adam.init(params), adam.init(params)
    differs = []
    for g, norm in zip(steps, norms, strict=True):
        updates, state = tx.update(g, state, params)
        scale = max_norm / max(norm, max_norm)
        expected, clipped_state = adam.update({k: x * scale for k, x in g.items()}, clipped_state, params)
        unclipped, raw_state = adam.update(g, raw_state, params)
        for leaf in params:
            np.testing.assert_allclose(
                np.asarray(updates[leaf]), np.asarray(expected[leaf]), rtol=1e-5, atol=1e-9
            )
        differs.append(
            max(float(np.max(np.abs(np.asarray(updates[k]) - np.asarray(unclipped[k])))) for k in params)
        )
        params = optax.apply_updates(params, updates)
    # Adam's first step is ~lr·sign(g) whatever the scale, so clipping shows from the second step on (here
    # by ~0.2 lr and ~0.65 lr); clipping after Adam (updates of norm ~lr << max_norm) would equal
    # unclipped Adam
    assert differs[0] < 1e-5 and min(differs[1:]) > 0.1 * lr, differs
