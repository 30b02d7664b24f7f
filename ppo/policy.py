"""The greedy policy in NumPy, free of JAX: shared by ``PPOAgent.predict``, evaluation and the served
MLflow model, so all three give identical actions for identical parameters."""

from __future__ import annotations

from typing import Any

import numpy as np


def actor_layers(params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The actor's (kernel, bias) pairs in order (``Dense_0``, ``Dense_1``, ...) as float32 arrays."""
    actor = params["params"]["actor"] if "params" in params else params["actor"]
    names = sorted(actor, key=lambda n: int(n.rsplit("_", 1)[1]))
    return [
        (np.asarray(actor[n]["kernel"], np.float32), np.asarray(actor[n]["bias"], np.float32)) for n in names
    ]


def numpy_logits(layers: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray) -> np.ndarray:
    """The actor's forward pass: same math as :class:`ppo.networks.ActorNetwork` (tanh MLP)."""
    x = np.asarray(obs, np.float32)
    for kernel, bias in layers[:-1]:
        x = np.tanh(x @ kernel + bias)
    kernel, bias = layers[-1]
    return x @ kernel + bias


def greedy_actions(layers: list[tuple[np.ndarray, np.ndarray]], obs: np.ndarray) -> np.ndarray:
    return numpy_logits(layers, obs).argmax(-1).astype(np.int64)
