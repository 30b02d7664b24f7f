"""The authenticated team set-up (PPO_AUTH=1 make serve), end to end on real servers: credentials are
generated into $PPO_HOME/auth.env (0600) and never printed; a request without them (or with wrong ones) is
refused by both servers (401); a train-ppo deployment run with them trains, gates and registers."""

from __future__ import annotations

import base64
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, prefect_cli, stop_team, venv_env

pytestmark = pytest.mark.integration


def _read_env(path: Path) -> dict[str, str]:
    """``export KEY=value`` lines, as serve.sh writes them (values are shell-safe: no quoting needed)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value
    return out


def _code(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _basic(user_pass: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    home = tmp_path_factory.mktemp("team-auth")
    env = venv_env(
        PPO_HOME=str(home),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        PPO_BIN=str(Path(sys.executable).parent),
        PPO_AUTH="1",
    )
    for key in ("PREFECT_HOME", "PPO_FAULTS", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    try:
        up = subprocess.run(
            ["bash", str(ROOT / "scripts" / "serve.sh")], env=env, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        env.update(_read_env(home / "run" / "serve.env"))
        env["PREFECT_HOME"] = str(home / "prefect")
        yield env, home, up.stdout + up.stderr
    finally:
        stop_team(home, env)


def test_credentials_are_private_and_never_printed(team):
    env, home, output = team
    auth = home / "auth.env"
    for private in (auth, home / "mlflow-secret-key", home / "mlflow-auth.db"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    secrets = _read_env(auth)
    assert set(secrets) >= {"PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert f"source {auth}" in output  # serve.sh says how to use them
    password = secrets["MLFLOW_TRACKING_PASSWORD"]
    token = secrets["PREFECT_API_AUTH_STRING"].partition(":")[2]
    assert len(password) >= 20 and len(token) >= 20
    for text in [output, *(p.read_text(errors="replace") for p in (home / "run").iterdir() if p.is_file())]:
        assert password not in text and token not in text
    assert "PASSWORD" not in (home / "run" / "serve.env").read_text()


def test_requests_without_credentials_are_refused(team):
    env, home, _ = team
    secrets = _read_env(home / "auth.env")
    api = env["PREFECT_API_URL"]
    search = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _code(f"{api}/admin/version") == 401
    assert _code(f"{api}/admin/version", _basic("ppo:wrong")) == 401
    assert _code(f"{api}/admin/version", _basic(secrets["PREFECT_API_AUTH_STRING"])) == 200
    assert _code(search) == 401
    assert _code(search, _basic("admin:wrong")) == 401
    good = f"{secrets['MLFLOW_TRACKING_USERNAME']}:{secrets['MLFLOW_TRACKING_PASSWORD']}"
    assert _code(search, _basic(good)) == 200
    # the Prefect CLI without the auth string is refused too
    assert prefect_cli(env, "deployment", "ls").returncode != 0


def test_deployment_runs_with_credentials(team, monkeypatch):
    env, home, _ = team
    env = {**env, **_read_env(home / "auth.env")}
    run = prefect_cli(
        env,
        "deployment",
        "run",
        "train-ppo/train-ppo",
        "-p",
        'overrides={"gate.episodes": 10, "train.max_env_steps": 8192}',
        "--watch",
    )
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]

    from mlflow.tracking import MlflowClient

    # MLflow's client reads the credentials from the environment, as a sourced auth.env provides them
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    # the registry too: an earlier test in this process may have set the global registry URI elsewhere
    client = MlflowClient(env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='ppo-cartpole'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_run(versions[0].run_id).info.status == "FINISHED"
