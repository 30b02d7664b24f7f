"""Flax actor-critic: separate actor and critic torsos (tanh MLPs, after 3x3 convolutions for grid
observations) with orthogonal initialisation.

Separate torsos (no shared layers) are what CleanRL and PureJaxRL use for classic control: the value
loss cannot distort the policy features. Orthogonal init with gain sqrt(2) for hidden layers, 0.01 for
the policy head (near-uniform initial policy) and 1.0 for the value head.

:func:`init_params` draws that initialisation with NumPy on the host. Why: under ``jit``, Flax's
orthogonal initialiser (threefry draws + a QR per layer) costs ~0.9 s of XLA compilation on a cold
start, a quarter of the time to solve CartPole; NumPy does it in a millisecond. The modules' own
initialisers stay, so ``network.init`` gives the same distribution (used for shapes and by hand).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ppo.policy import ACTIVATION_KEY, ACTIVATIONS


def _dense(features: int, gain: float) -> nn.Dense:
    return nn.Dense(
        features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.constant(0.0)
    )


class Conv3x3(nn.Module):
    """``nn.Conv(features, (3, 3), padding="VALID")`` (same parameters, same result), computed as one
    matrix product over the nine shifted views of the input (im2col).

    Why: XLA's CPU convolution, batched over envs and seeds and differentiated, ran MinAtar training at
    ~450 env steps/s here; the same arithmetic as a matmul runs ~50x faster (bench figures in the README).
    """

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.orthogonal(np.sqrt(2.0)), (3, 3, channels, self.features)
        )
        bias = self.param("bias", nn.initializers.constant(0.0), (self.features,))
        h, w = x.shape[-3] - 2, x.shape[-2] - 2
        # patches[..., y, x, (i * 3 + j) * C + c] = x[..., y + i, x + j, c]: kernel[i, j, c] flattened
        patches = jnp.concatenate(
            [x[..., i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
        )
        return patches @ kernel.reshape(9 * channels, self.features) + bias


def _torso(
    x: jnp.ndarray,
    conv_channels: Sequence[int],
    hidden_sizes: Sequence[int],
    obs_rank: int,
    activation: str = "tanh",
) -> jnp.ndarray:
    """Observations → features: 3x3 convolutions (stride 1, 'VALID', ReLU; for grid/pixel observations such
    as MinAtar's 10x10xC, as in the MinAtar paper's networks), then a flattened MLP with ``activation``
    (tanh, PureJaxRL's and SB3's default; or ReLU, as gymnax-blines' MinAtar agents). Without
    convolutions a grid is flattened straight into the MLP. The batch is every leading axis of ``x``
    before the observation's own ``obs_rank`` axes (1 for vectors, 3 for grids)."""
    for i, c in enumerate(conv_channels):
        x = nn.relu(Conv3x3(c, name=f"Conv_{i}")(x))
    if obs_rank > 1:
        x = x.reshape((*x.shape[: x.ndim - obs_rank], -1))
    act = nn.tanh if activation == "tanh" else nn.relu
    for h in hidden_sizes:
        x = act(_dense(h, np.sqrt(2.0))(x))
    return x


class ActorNetwork(nn.Module):
    """Observations → action logits (discrete), or → ``(mean, log_std)`` of a diagonal Gaussian
    (continuous; ``log_std`` is a learned vector, independent of the state, starting at ``log_std_init``)."""

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)
    continuous: bool = False
    log_std_init: float = 0.0
    conv_channels: Sequence[int] = ()
    obs_rank: int = 1
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> Any:
        x = _torso(x, self.conv_channels, self.hidden_sizes, self.obs_rank, self.activation)
        out = _dense(self.action_dim, 0.01)(x)
        if not self.continuous:
            return out
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,))
        return out, jnp.broadcast_to(log_std, out.shape)


class CriticNetwork(nn.Module):
    """Observations → state value V(s)."""

    hidden_sizes: Sequence[int] = (64, 64)
    conv_channels: Sequence[int] = ()
    obs_rank: int = 1
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = _torso(x, self.conv_channels, self.hidden_sizes, self.obs_rank, self.activation)
        return jnp.squeeze(_dense(1, 1.0)(x), axis=-1)


class PPONetwork(nn.Module):
    """Both heads in one module so one ``params`` tree holds the whole agent."""

    action_dim: int
    hidden_sizes: Sequence[int] = (64, 64)
    continuous: bool = False
    log_std_init: float = 0.0
    conv_channels: Sequence[int] = ()  # a CNN torso for grid/pixel observations (e.g. MinAtar: (16,))
    obs_rank: int = 1  # axes of one observation: 1 for vectors, 3 for (H, W, C) grids
    activation: str = "tanh"  # the MLP's (ppo.policy.ACTIVATIONS); the variables record a non-default one

    def setup(self) -> None:
        convs, hidden = tuple(self.conv_channels), tuple(self.hidden_sizes)
        self.actor = ActorNetwork(
            self.action_dim, hidden, self.continuous, self.log_std_init, convs, self.obs_rank, self.activation
        )
        self.critic = CriticNetwork(hidden, convs, self.obs_rank, self.activation)

    def __call__(self, x: jnp.ndarray) -> tuple[Any, jnp.ndarray]:
        return self.actor(x), self.critic(x)

    def value(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.critic(x)


def _shape(observation: int | Sequence[int]) -> tuple[int, ...]:
    return (int(observation),) if isinstance(observation, int | np.integer) else tuple(observation)


def param_shapes(network: PPONetwork, observation: int | Sequence[int]) -> Any:
    """The tree ``network.init`` returns for observations of shape ``observation`` (or of that many
    dims), as ShapeDtypeStructs (traced, never compiled or run).

    Traced once per (network, shape) in a process: a population initialises one row per member and seed,
    and tracing Flax's ``init`` costs ~0.1 s each time (6 s of a 64-member population's start)."""
    import jax

    # a copy of the containers: callers may extend the tree they get
    return jax.tree.map(lambda s: s, _param_shapes(network, _shape(observation)))


@functools.lru_cache(maxsize=64)
def _param_shapes(network: PPONetwork, observation: tuple[int, ...]) -> Any:
    import jax

    x = jnp.zeros((1, *observation), jnp.float32)
    shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0), x)
    if network.activation != "tanh":  # as init_params records it
        shapes = {**shapes, ACTIVATION_KEY: jax.ShapeDtypeStruct((), jnp.int32)}
    return shapes


def _orthogonal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    a = rng.standard_normal((max(n_in, n_out), min(n_in, n_out)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # a uniformly random orthogonal matrix (Haar), as Flax's
    return q if n_in >= n_out else q.T


def init_params(network: PPONetwork, observation: int | Sequence[int], seed: int) -> dict[str, Any]:
    """Orthogonal weights (gains as in the modules) and zero biases for ``network``, drawn with NumPy from
    ``seed``: the same tree as ``network.init`` returns, without compiling anything. ``observation`` is
    the observation's shape (or its size, for vectors)."""
    shapes = param_shapes(network, observation)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x50504F]))  # "PPO": apart from env draws

    def torso(tree: dict[str, Any], head_gain: float) -> dict[str, Any]:
        # Dense_0, Dense_1, ... in call order
        names = sorted((n for n in tree if n.startswith("Dense_")), key=lambda n: int(n.rsplit("_", 1)[1]))
        out: dict[str, Any] = {}
        if "log_std" in tree:
            out["log_std"] = np.full(tree["log_std"].shape, network.log_std_init, np.float32)
        convs = sorted((n for n in tree if n.startswith("Conv_")), key=lambda n: int(n.rsplit("_", 1)[1]))
        for name in convs:  # Flax's orthogonal init of a conv kernel: over (kh * kw * in, out), reshaped
            *window, n_out = tree[name]["kernel"].shape
            kernel = _orthogonal(rng, int(np.prod(window)), n_out).reshape(*window, n_out)
            out[name] = {
                "kernel": (np.sqrt(2.0) * kernel).astype(np.float32),
                "bias": np.zeros(n_out, np.float32),
            }
        for i, name in enumerate(names):
            n_in, n_out = tree[name]["kernel"].shape
            gain = head_gain if i == len(names) - 1 else np.sqrt(2.0)
            kernel = _orthogonal(rng, n_in, n_out)
            out[name] = {"kernel": (gain * kernel).astype(np.float32), "bias": np.zeros(n_out, np.float32)}
        return out

    p = shapes["params"]
    variables: dict[str, Any] = {
        "params": {"actor": torso(p["actor"], 0.01), "critic": torso(p["critic"], 1.0)}
    }
    if network.activation != "tanh":
        # the NumPy forward (evaluation, the gate, the served model) reads the activation from the variables,
        # which travel alone (checkpoints, registered models); tanh, the default, is not recorded
        variables[ACTIVATION_KEY] = np.int32(ACTIVATIONS.index(network.activation))
    return variables
