"""Atomic checkpoints of the whole train state (flax msgpack), so a resumed run ends bit-identical.

The file is written to a temporary name, fsynced and renamed over ``checkpoint.msgpack``: a crash at
any point leaves either the previous complete checkpoint or the new complete one, never a torn file.
A SHA-256 of the payload is stored beside the payload and verified on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from ppo import atomic

CHECKPOINT_NAME = "checkpoint.msgpack"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or from a different config)."""


def save_checkpoint(directory: str | os.PathLike[str], state: Any, meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = serialization.msgpack_serialize(
        {"state": serialization.to_state_dict(jax.device_get(state)), "meta": json.dumps(meta)}
    )
    blob = serialization.msgpack_serialize(
        {"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    )
    return atomic.write_bytes(directory / CHECKPOINT_NAME, blob)


def load_checkpoint(directory: str | os.PathLike[str], template: Any) -> tuple[Any, dict[str, Any]] | None:
    """Return ``(state, meta)`` restored into ``template``'s structure, or None when there is none.

    ``template`` is a state or only its shapes (``jax.ShapeDtypeStruct`` leaves, from ``jax.eval_shape``:
    see :meth:`ppo.runtime.Runtime.state_shapes`); its leaves give the structure and the shapes checked,
    the values come from the file (NumPy arrays).
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        outer = serialization.msgpack_restore(path.read_bytes())
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise ValueError("digest mismatch")
        inner = serialization.msgpack_restore(payload)
        state = serialization.from_state_dict(template, inner["state"])
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(f"checkpoint {path} is unreadable or from another config: {e}") from None
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(state), strict=True):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(f"checkpoint {path} has shapes that do not match this config")
    return state, json.loads(inner["meta"])


def checkpoint_digest(directory: str | os.PathLike[str]) -> str:
    """SHA-256 of the checkpoint file (a cache key for evaluation)."""
    return hashlib.sha256((Path(directory) / CHECKPOINT_NAME).read_bytes()).hexdigest()
