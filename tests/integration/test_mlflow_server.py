"""Against a real `mlflow server` on 127.0.0.1 over HTTP: log → register → alias → load → serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml

from tests.helpers import (
    Background,
    free_port,
    register_passed,
    small_config,
    start_mlflow_server,
    venv_env,
    wait_http,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url
    finally:
        server.stop()


def _post(url: str, body: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_log_register_alias_load_and_serve_over_http(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    from ppo import PPOTrainer, tracking

    cfg = small_config(**{"tracking.enabled": True})
    trainer = PPOTrainer(config=cfg, enable_mlflow=True)
    result = trainer.train()
    assert trainer.logger.tracking_uri == mlflow_server
    version = register_passed(result["run_id"])
    tracking.set_champion("ppo-cartpole", version)
    model = tracking.load_model("models:/ppo-cartpole@champion")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    expected = trainer.agent.predict(obs)
    np.testing.assert_array_equal(model.predict(obs), expected)

    port = free_port()
    serve = Background(
        [sys.executable, "-m", "ppo.cli", "serve", "--port", str(port)],
        tmp_path / "serve.log",
        env=venv_env(MLFLOW_TRACKING_URI=mlflow_server, PPO_HOME=str(tmp_path / "home")),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120, proc=serve.proc)
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = _post(url, {"inputs": obs.tolist()})
        assert status == 200, body
        assert body["predictions"] == expected.tolist()
    finally:
        serve.stop()
        assert "0.0.0.0" not in serve.tail(20000)


def test_unreachable_server_fails_fast_with_one_message(tmp_path):
    cfg = small_config(**{"tracking.enabled": True})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "ppo.cli", "train", "-c", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": dead, "PPO_HOME": str(tmp_path / "h")},
        timeout=120,
    )
    elapsed = time.time() - start
    assert proc.returncode == 1
    assert f"MLflow tracking server {dead} is unreachable after 3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30
    assert not (tmp_path / "h" / "checkpoints").exists()
