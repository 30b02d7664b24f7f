"""Model integrity (issue 16, item 5): a registered model whose ``params.msgpack`` was overwritten with
plausible floats (the same structure, other values) is refused when loaded, by ``ppo serve`` (one error
line, exit 1, nothing served) and by the gate's champion evaluation (``BrokenVersionError``), instead of
being served silently. The same when the attacker also rewrites the model's own ``digests.json``: the
version tag ``model.sha256`` written at registration still differs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppo import PPOTrainer, tracking
from tests.helpers import free_port, register_passed, small_config, venv_env

pytestmark = pytest.mark.reliability

MODEL = "ppo-cartpole"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A trained, registered (gate-passed) version in its own $PPO_HOME, and where its files lie."""
    home = tmp_path_factory.mktemp("integrity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPO_HOME", str(home))
        trainer = PPOTrainer(config=small_config(**{"tracking.enabled": True}), enable_mlflow=True)
        version = register_passed(trainer.train()["run_id"])
        c = tracking.client()
        source = c.get_model_version(MODEL, version).source  # models:/m-<id>
        location = c.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location
        files = Path(location.removeprefix("file://"))
        assert (files / "artifacts" / "params.msgpack").is_file(), sorted(files.rglob("*"))
        yield home, version, files, mp


def _serve(home: Path, version: str) -> subprocess.CompletedProcess:
    """``ppo serve`` of the version; a server that starts instead of refusing is stopped by the timeout."""
    args = [sys.executable, "-m", "ppo.cli", "serve", "--model", f"models:/{MODEL}/{version}"]
    return subprocess.run(
        [*args, "--port", str(free_port())],
        env=venv_env(PPO_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=90,
    )


def _tamper(params_file: Path) -> None:
    """Overwrite the parameters with plausible floats: the same tree and shapes, every value nudged."""
    from flax import serialization

    tree = serialization.msgpack_restore(params_file.read_bytes())
    rng = np.random.default_rng(0)

    def nudge(node):
        if isinstance(node, dict):
            return {k: nudge(v) for k, v in node.items()}
        if isinstance(node, np.ndarray) and node.dtype == np.float32:
            return (node + rng.normal(0, 0.05, node.shape)).astype(np.float32)
        return node

    params_file.write_bytes(serialization.msgpack_serialize(nudge(tree)))


def test_registration_records_the_digest_and_an_untouched_model_loads(registered):
    home, version, files, _ = registered
    tag = tracking.client().get_model_version(MODEL, version).tags.get("model.sha256")
    assert tag and len(tag) == 64
    from ppo.tracking.model import folder_digest

    assert tag == folder_digest(files)
    digests = json.loads((files / "artifacts" / "digests.json").read_text())
    assert set(digests) == {"params.msgpack", "agent.json", "config.yaml"}
    model = tracking.load_model(f"models:/{MODEL}/{version}")
    assert model.predict(np.zeros((2, 4), np.float32)).shape == (2,)
    params, _ = tracking.version_params(MODEL, version)
    assert params


def test_overwritten_params_are_refused_everywhere(registered):
    home, version, files, _ = registered
    from ppo.tracking.registry import BrokenVersionError

    params_file = files / "artifacts" / "params.msgpack"
    original = params_file.read_bytes()
    _tamper(params_file)
    try:
        # ModelIntegrityError (named by its message: before the fix there was no such class)
        with pytest.raises(RuntimeError, match="params.msgpack does not match the digest"):
            tracking.load_model(f"models:/{MODEL}/{version}")
        # the gate's champion evaluation: reported as a broken champion (a good candidate replaces it)
        with pytest.raises(BrokenVersionError, match="do not match the digest recorded at registration"):
            tracking.version_params(MODEL, version)
        served = _serve(home, version)
        assert served.returncode == 1, served.stderr[-2000:]
        errors = [line for line in served.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "digest" in errors[0], served.stderr[-2000:]
        assert "Traceback" not in served.stderr
    finally:
        params_file.write_bytes(original)


def test_rewritten_digest_file_is_still_caught_by_the_version_tag(registered):
    """The attacker recomputes digests.json too: the model loads from its own files, but the version tag
    written at registration (over every file, digests.json included) differs, so serving is refused."""
    home, version, files, _ = registered
    from ppo.tracking.registry import BrokenVersionError

    params_file = files / "artifacts" / "params.msgpack"
    digests_file = files / "artifacts" / "digests.json"
    original, original_digests = params_file.read_bytes(), digests_file.read_bytes()
    _tamper(params_file)
    digests = json.loads(original_digests)
    digests["params.msgpack"] = hashlib.sha256(params_file.read_bytes()).hexdigest()
    digests_file.write_text(json.dumps(digests))
    try:
        with pytest.raises(BrokenVersionError, match="model.sha256"):
            tracking.version_params(MODEL, version)
        served = _serve(home, version)
        assert served.returncode == 1, served.stderr[-2000:]
        errors = [line for line in served.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "registration" in errors[0], served.stderr[-2000:]
    finally:
        params_file.write_bytes(original)
        digests_file.write_bytes(original_digests)
