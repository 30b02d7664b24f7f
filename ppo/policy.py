"""The greedy policy in NumPy, free of JAX: shared by ``PPOAgent.predict``, evaluation and the served
MLflow model, so all three give identical actions for identical parameters.

It follows the env's action space (:class:`ppo.spaces.ActionSpace`): the argmax of the logits (int64,
shape ``(n,)``) for discrete actions, the Gaussian's mean clipped to the action bounds (float32, shape
``(n, act_dim)``) for continuous ones. When the variables carry observation statistics (``obs_norm``,
see :mod:`ppo.normalize`), observations are normalised with them, frozen, exactly as in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppo.spaces import ActionSpace

#: observation/reward normalisation: variance epsilon and clip range (SB3 VecNormalize's defaults)
NORM_EPS = 1e-8
NORM_CLIP = 10.0


Layers = list[tuple[np.ndarray, np.ndarray]]

#: the MLP's activation (``ppo.activation``), by the code the variables carry under :data:`ACTIVATION_KEY`.
#: tanh (code 0) is the default and is not stored, so a tanh agent's variables are exactly as before.
ACTIVATIONS = ("tanh", "relu")
ACTIVATION_KEY = "activation"


def activation_of(params: Any) -> str:
    """The MLP activation an agent's variables were trained with (``tanh`` unless they say otherwise)."""
    code = params.get(ACTIVATION_KEY) if isinstance(params, dict) else None
    if code is None:
        return "tanh"
    i = int(np.asarray(code).reshape(-1)[0])
    if not 0 <= i < len(ACTIVATIONS):
        raise ValueError(f"unknown activation code {i} in the agent's variables (known: {ACTIVATIONS})")
    return ACTIVATIONS[i]


def actor_layers(params: Any, kind: str = "Dense") -> Layers:
    """The actor's (kernel, bias) pairs of one kind in call order (``Dense_0``, ``Dense_1``, ... or
    ``Conv_0``, ...) as float32 arrays."""
    actor = params["params"]["actor"] if "params" in params else params["actor"]
    names = sorted((n for n in actor if n.startswith(f"{kind}_")), key=lambda n: int(n.rsplit("_", 1)[1]))
    return [
        (np.asarray(actor[n]["kernel"], np.float32), np.asarray(actor[n]["bias"], np.float32)) for n in names
    ]


def _conv_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Flax's ``nn.Conv(padding="VALID")`` at stride 1 (a cross-correlation) on ``(n, H, W, C)``."""
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # n, H', W', C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True)


def numpy_logits(
    layers: Layers, obs: np.ndarray, convs: Layers | None = None, activation: str = "tanh"
) -> np.ndarray:
    """The actor's forward pass: same math as :class:`ppo.networks.ActorNetwork` (ReLU 3x3 convolutions
    for grids, then an MLP with ``activation``). Its output is the logits (discrete) or the Gaussian's mean
    (continuous)."""
    x = np.asarray(obs, np.float32)
    for kernel, bias in convs or ():
        x = np.maximum(_conv_valid(x, kernel) + bias, 0.0)
    if x.ndim > 2:
        x = x.reshape(len(x), -1)
    for kernel, bias in layers[:-1]:
        x = x @ kernel + bias
        x = np.tanh(x) if activation == "tanh" else np.maximum(x, 0.0)
    kernel, bias = layers[-1]
    return x @ kernel + bias


def obs_stats(params: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The frozen observation statistics ``(mean, sqrt(var + eps))`` the variables carry, else ``None``."""
    stats = params.get("obs_norm") if isinstance(params, dict) else None
    if stats is None:
        return None
    mean = np.asarray(stats["mean"], np.float32)
    return mean, np.sqrt(np.asarray(stats["var"], np.float32) + np.float32(NORM_EPS))


def normalized(stats: tuple[np.ndarray, np.ndarray] | None, obs: np.ndarray) -> np.ndarray:
    """What the networks see (the JAX twin is :func:`ppo.normalize.normalize_obs`)."""
    x = np.asarray(obs, np.float32)
    if stats is None:
        return x
    mean, scale = stats
    return np.clip((x - mean) / scale, -NORM_CLIP, NORM_CLIP).astype(np.float32)


def observation_batch(observations: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``observations`` as a float32 batch ``(n, *shape)``: a single observation gets a batch axis, and a
    batch of flattened grids ``(n, prod(shape))`` is reshaped; anything else is a :class:`ValueError`
    naming the expected shape (the served model turns it into HTTP 400)."""
    obs = np.asarray(observations, dtype=np.float32)
    if obs.shape == shape:
        obs = obs[None]
    elif len(shape) > 1 and obs.ndim == 2 and obs.shape[1] == int(np.prod(shape)):
        obs = obs.reshape((len(obs), *shape))
    if obs.shape[1:] != shape or obs.ndim != len(shape) + 1:
        expected = ", ".join(str(d) for d in shape)
        raise ValueError(f"observations must have shape (n, {expected}), got {obs.shape}")
    return obs


class GreedyPolicy:
    """Observations ``(n, obs_dim)`` → greedy actions, from a variables tree and the env's action space."""

    def __init__(self, params: Any, action: ActionSpace) -> None:
        self.action = action
        self.layers = actor_layers(params)
        self.convs = actor_layers(params, "Conv")
        self.stats = obs_stats(params)
        self.activation = activation_of(params)
        out = self.layers[-1][0].shape[1]
        if out != action.n:
            raise ValueError(f"the actor has {out} outputs but the action space has n={action.n}")
        if not action.discrete:
            self.low = np.asarray(action.low, np.float32)
            self.high = np.asarray(action.high, np.float32)

    def head(self, obs: np.ndarray) -> np.ndarray:
        """Logits (discrete) or means (continuous) for observations ``(n, obs_dim)``."""
        return numpy_logits(self.layers, normalized(self.stats, obs), self.convs, self.activation)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = self.head(obs)
        if self.action.discrete:
            return out.argmax(-1).astype(np.int64)
        return np.clip(out, self.low, self.high).astype(np.float32)
