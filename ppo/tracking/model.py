"""The served model: an MLflow pyfunc defined from code (``ppo/tracking/model_code.py``), never pickled.

Artifacts: the files ``PPOAgent.save`` writes (one parameter format on disk): ``params.msgpack`` (flax
msgpack of the agent's variables: the actor-critic parameters and, when observations are normalised, their
frozen statistics) and ``agent.json`` (sizes and action space), plus ``config.yaml``. Input: float32
observations (n, obs_dim) as an array or DataFrame; output: the greedy actions of
:class:`ppo.policy.GreedyPolicy`, the same function as ``PPOAgent.predict``: int64 ``(n,)`` for discrete
actions, float32 ``(n, act_dim)`` within the bounds for continuous ones. :func:`log_policy_model` logs it
to a run (registering is the registry's job).

Integrity: :func:`model_artifacts` also writes ``digests.json`` (sha256 of each artifact file) and
``load_context`` refuses files that do not match it (:class:`ModelIntegrityError`), so a ``params.msgpack``
overwritten with plausible floats is never served; the registry adds a digest over the whole model folder as
the version tag ``model.sha256`` (:func:`folder_digest`), which also covers ``digests.json`` itself.

Importing this module (which the served model does) imports MLflow and NumPy, not JAX, and neither does
loading or using the model: ``params.msgpack`` is read by :mod:`ppo.params_io` (NumPy and ``msgpack``).
Only writing the artifacts (:func:`model_artifacts`, in the trainer's process) uses Flax.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel

from ppo.params_io import read_params
from ppo.policy import GreedyPolicy, observation_batch
from ppo.spaces import ActionSpace

#: the artifact (and file) holding the sha256 of every other artifact file, written at logging time
DIGESTS = "digests.json"


class ModelIntegrityError(RuntimeError):
    """A model file does not match the digest recorded when the model was logged or registered (it was
    changed or replaced afterwards): the model is refused rather than served."""


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """One sha256 over every file under ``folder``: its relative path and content digest, in sorted order
    (the version tag ``model.sha256``). Left out: byte-compiled caches (Python may write them while a
    model is loaded) and ``registered_model_meta``, which MLflow writes into every ``models:/`` download."""
    root = Path(folder)
    h = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and p.relative_to(root).as_posix() != "registered_model_meta"
    )
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def verify_artifacts(artifacts: dict[str, str]) -> None:
    """Check the artifact files against ``digests.json`` (also an artifact); raise
    :class:`ModelIntegrityError` naming the first file that differs. Models logged before digests were
    recorded have no ``digests`` artifact: nothing to check against."""
    if "digests" not in artifacts:
        return
    try:
        expected = json.loads(Path(artifacts["digests"]).read_text())
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"the model's {DIGESTS} is unreadable: {e}") from None
    for name, path in sorted(artifacts.items()):
        if name == "digests":
            continue
        file = Path(path).name
        if file not in expected:
            raise ModelIntegrityError(f"the model file {file} has no recorded digest in {DIGESTS}")
        actual = file_sha256(path)
        if actual != expected[file]:
            raise ModelIntegrityError(
                f"the model file {file} does not match the digest recorded when it was logged "
                f"(sha256 {actual[:12]}..., expected {expected[file][:12]}...): it was changed afterwards; "
                "refusing to load it"
            )


#: the ``ppo`` package folder, shipped with every logged model (``code_paths``): the served model imports
#: :mod:`ppo.policy` and this module from it
_PPO_PACKAGE = Path(__file__).resolve().parents[1]


class PPOPolicyModel(PythonModel):
    """Greedy PPO policy: observations → actions."""

    # MLflow 3 inspects a PythonModel subclass's ``predict`` for type hints when the class is defined and,
    # finding none, printed a yellow UserWarning (raw escape codes in logs) on every run. The schema is
    # the logged tensor signature, so type-hint validation does not apply: this (MLflow's own switch for
    # its ChatModel) skips the inspection; without hints MLflow's wrapper would only pass calls through.
    _skip_type_hint_validation = True

    def load_context(self, context):
        verify_artifacts(context.artifacts)  # a tampered params.msgpack is refused, never served
        meta = json.loads(Path(context.artifacts["policy"]).read_text())
        params = read_params(context.artifacts["params"])  # NumPy + msgpack: loading imports no JAX
        self.policy = GreedyPolicy(params, action_space(meta))
        self.observation_shape = tuple(meta.get("observation_shape") or (int(meta["observation_dim"]),))

    # no type hints: MLflow would read them as a schema
    def predict(self, context, model_input, params=None):
        data = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        try:
            numbers = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise MlflowException(f"observations must be numbers: {e}", INVALID_PARAMETER_VALUE) from None
        try:
            obs = observation_batch(numbers, self.observation_shape)
        except ValueError as e:
            raise MlflowException(str(e), INVALID_PARAMETER_VALUE) from None
        if not np.isfinite(obs).all():
            raise MlflowException("observations must be finite (no NaN or inf)", INVALID_PARAMETER_VALUE)
        return self.policy(obs)


def model_artifacts(agent: Any, config: Any, directory: Path) -> dict[str, str]:
    """Write the model's artifact files into ``directory``; return MLflow's ``artifacts`` mapping."""
    import yaml

    agent.save(directory)  # params.msgpack + agent.json: the agent's own format
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    files = (("params", "params.msgpack"), ("policy", "agent.json"), ("config", "config.yaml"))
    digests = {file: file_sha256(directory / file) for _, file in files}
    (directory / DIGESTS).write_text(json.dumps(digests, indent=1, sort_keys=True))
    return {name: str(directory / file) for name, file in (*files, ("digests", DIGESTS))}


def action_space(meta: dict[str, Any]) -> ActionSpace:
    """The action space in a model's ``agent.json`` (models logged before it was recorded: discrete)."""
    if "action_space" in meta:
        return ActionSpace.from_dict(meta["action_space"])
    return ActionSpace("discrete", int(meta["action_dim"]))


def model_signature(
    observation: int | tuple[int, ...], action: ActionSpace | None = None
) -> tuple[Any, np.ndarray]:
    """Input float32 ``(-1, *obs_shape)``; output int64 ``(-1,)`` (discrete) or float32 ``(-1, act_dim)``."""
    shape = (observation,) if isinstance(observation, int) else tuple(observation)
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    if action is None or action.discrete:
        output = TensorSpec(np.dtype(np.int64), (-1,))
    else:
        output = TensorSpec(np.dtype(np.float32), (-1, action.n))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]), outputs=Schema([output])
    )
    return signature, np.zeros((2, *shape), np.float32)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "numpy", "msgpack", "flax", "jax", "pydantic", "pyyaml")]


def log_policy_model(run_id: str, agent: Any, config: Any, uri: str | None = None) -> str:
    """Log the greedy policy as a pyfunc from code (no pickle) to the run in store ``uri`` (default: the
    configured store). Returns the model URI."""
    from ppo.tracking.store import client

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = model_artifacts(agent, config, Path(tmp))
        signature, example = model_signature(agent.observation_shape, agent.action_space)
        c = client(uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("model_code.py")),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements(),
                code_paths=[str(_PPO_PACKAGE)],
            )
    c.set_tag(run_id, "model_uri", info.model_uri)
    return info.model_uri
