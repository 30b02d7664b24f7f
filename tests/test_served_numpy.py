"""The served model is NumPy only when it is loaded and used, not only when its module is imported: its
``params.msgpack`` is read by :mod:`ppo.params_io` (NumPy + msgpack), which restores exactly what
``flax.serialization.msgpack_restore`` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ppo import params_io
from tests.helpers import ROOT, small_config


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from ppo import PPOTrainer

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # $PPO_HOME for the training run only
        mp.setenv("PPO_HOME", str(home))
        trainer = PPOTrainer(config=small_config(**{"tracking.enabled": True}), enable_mlflow=True)
        result = trainer.train()
        from ppo import tracking

        uri = tracking.default_tracking_uri()
    return trainer, result, uri


def test_loading_and_predicting_with_the_logged_model_imports_no_jax(tracked_run, tmp_path):
    trainer, result, uri = tracked_run
    from mlflow.tracking import MlflowClient

    model_uri = MlflowClient(uri).get_run(result["run_id"]).data.tags["model_uri"]
    obs = np.random.default_rng(5).normal(size=(32, 4)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    code = (
        "import json, sys\nimport mlflow, numpy as np\n"
        f"m = mlflow.pyfunc.load_model({model_uri!r})\n"
        f"actions = m.predict(np.load({str(tmp_path / 'obs.npy')!r}))\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, loaded[:10]\n"
        "assert not loaded, loaded[:10]\n"
        "print(json.dumps(actions.tolist()))\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served == trainer.agent.predict(obs, deterministic=True).tolist()


def _assert_same_tree(ours, theirs, path="") -> None:
    assert type(ours) is type(theirs), (path, type(ours), type(theirs))
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), path
        for key in theirs:
            _assert_same_tree(ours[key], theirs[key], f"{path}/{key}")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_same_tree(a, b, f"{path}/{i}")
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, path
        assert ours.tobytes() == theirs.tobytes(), path  # bit for bit (NaN payloads, -0.0 included)
        assert ours.flags.writeable == theirs.flags.writeable, path
    elif isinstance(theirs, np.generic):
        assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes(), path
    else:
        assert ours == theirs, path


def test_the_reader_matches_flax_on_real_parameters(tracked_run, tmp_path):
    from flax import serialization

    from ppo.tracking.model import model_artifacts

    trainer, _, _ = tracked_run
    artifacts = model_artifacts(trainer.agent, trainer.config, tmp_path)
    encoded = open(artifacts["params"], "rb").read()
    theirs = serialization.msgpack_restore(encoded)
    ours = params_io.read_params(artifacts["params"])
    _assert_same_tree(ours, theirs)
    leaves = []

    def walk(tree):
        for value in tree.values():
            walk(value) if isinstance(value, dict) else leaves.append(value)

    walk(ours)
    assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}
    assert len({leaf.shape for leaf in leaves}) >= 3 and {leaf.ndim for leaf in leaves} == {1, 2}
    assert "actor" in ours["params"] and "critic" in ours["params"]


def test_the_reader_matches_flax_on_every_encoded_type(monkeypatch):
    """Dtypes and ranks, NumPy scalars, complex numbers, lists, bytes, None, unknown ext types, and
    arrays chunked over flax's size limit (lowered here so a small array is chunked)."""
    import ml_dtypes
    import msgpack
    from flax import serialization

    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 64)
    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.normal(size=(3, 4)).astype(np.float32),
        "f64": np.array([np.nan, -0.0, np.inf, 1e-300]),
        "f16": rng.normal(size=(2, 2, 2)).astype(np.float16),
        "bf16": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u8": np.arange(4, dtype=np.uint8),
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j, -3j], np.complex64),
        "empty": np.zeros((0, 3), np.float32),
        "rank0": np.array(2.5, np.float32),
        "scalar": np.float32(1.5),
        "iscalar": np.int32(-7),
        "complex": 1.5 - 2j,
        "nested": {"list": [np.ones(2, np.float32), 3, "text", None], "deep": {"x": np.eye(2)}},
        "big": rng.normal(size=(7, 5)).astype(np.float32),  # 140 bytes > 64: chunked
        "python": [1, 2.0, True, b"bytes"],
    }
    encoded = serialization.msgpack_serialize(tree)
    assert b"__msgpack_chunked_array__" in encoded
    _assert_same_tree(params_io.msgpack_restore(encoded), serialization.msgpack_restore(encoded))
    unknown = msgpack.packb({"x": msgpack.ExtType(42, b"opaque")})
    assert (
        params_io.msgpack_restore(unknown)
        == serialization.msgpack_restore(unknown)
        == {"x": msgpack.ExtType(42, b"opaque")}
    )
    chunked_root = serialization.msgpack_serialize(rng.normal(size=(40,)).astype(np.float32))
    _assert_same_tree(params_io.msgpack_restore(chunked_root), serialization.msgpack_restore(chunked_root))


def test_the_reader_imports_no_jax():
    code = (
        "import sys\nimport numpy as np\nimport msgpack\nfrom ppo import params_io\n"
        "tree = params_io.msgpack_restore(msgpack.packb({'a': 1}))\n"
        "assert tree == {'a': 1}\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-3000:]
