"""Atomic checkpoints of the whole train state (flax msgpack), so a resumed run ends bit-identical.

The file is written to a temporary name, fsynced and renamed over ``checkpoint.msgpack``: a crash at
any point leaves either the previous complete checkpoint or the new complete one, never a torn file.
A SHA-256 of the payload is stored beside the payload and verified on load.

:func:`checkpoint_folder` is the one place that decides where a config's checkpoints live (the trainer,
the pipeline's ``train`` task and ``ppo evaluate`` all ask it), so ``ppo evaluate -c F`` finds what
``ppo pipeline -c F`` trained. JAX and Flax are imported on first use: the folder rule and
:func:`verify_checkpoint` (the pipeline's cache check) need neither.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppo import atomic

if TYPE_CHECKING:
    from ppo.config import Config

CHECKPOINT_NAME = "checkpoint.msgpack"
RESULT_NAME = "result.json"
#: the checkout that holds ``ppo/`` and ``tasks/``: what :func:`code_version` digests, and where a sweep
#: file's relative ``base`` resolves (:func:`ppo.sweep.trial_configs`)
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def source_digest(root: str | os.PathLike[str]) -> str:
    """A digest of every source file of ``root/ppo`` and ``root/tasks``, sub-packages included."""
    root = Path(root)
    h = hashlib.sha256()
    for pkg in ("ppo", "tasks"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """This checkout's :func:`source_digest` (once per process): part of the checkpoint folder's name, so a
    re-run after a code change trains afresh instead of resuming a checkpoint of other code (the pipeline's
    cache keys use the same function: ``tasks._cache`` imports it)."""
    return source_digest(SOURCE_ROOT)


def checkpoint_folder(config: Config, *, existing: bool = False) -> Path:
    """Where ``config``'s checkpoints live: ``train.checkpoint_dir`` when the config names one (inside
    ``$PPO_HOME``), else ``$PPO_HOME/checkpoints/<config hash>-<code version>``.

    ``existing=True`` (looking a checkpoint up, e.g. ``ppo evaluate``): when this code version's folder has
    no checkpoint, the newest ``<config hash>-*`` folder that has one (a checkpoint trained before the last
    code change), so a code edit does not hide the trained agent from evaluation.
    """
    from ppo.config import confined_path, ppo_home

    if config.train.checkpoint_dir:
        return confined_path(config.train.checkpoint_dir)
    base = ppo_home() / "checkpoints"
    folder = base / f"{config.config_hash()}-{code_version()[:8]}"
    if existing and not (folder / CHECKPOINT_NAME).is_file() and base.is_dir():
        older = [p for p in base.glob(f"{config.config_hash()}-*") if (p / CHECKPOINT_NAME).is_file()]
        if older:
            return max(older, key=lambda p: (p / CHECKPOINT_NAME).stat().st_mtime)
    return folder


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or from a different config)."""


def save_checkpoint(directory: str | os.PathLike[str], state: Any, meta: dict[str, Any]) -> Path:
    import jax
    from flax import serialization

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
    import jax
    import numpy as np
    from flax import serialization

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


def verify_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the checkpoint in ``directory`` after checking its digest, without a template (no
    JAX): what the pipeline asks before trusting a cached result that points here.

    Raises :class:`FileNotFoundError` when there is none, :class:`CheckpointError` when it is unreadable.
    """
    import msgpack

    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    try:
        outer = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise ValueError("digest mismatch")
        meta = json.loads(msgpack.unpackb(payload, raw=False, strict_map_key=False)["meta"])
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None
    return meta
