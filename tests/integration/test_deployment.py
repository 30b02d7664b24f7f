"""End to end: real `prefect server`, process worker, `prefect deploy`, real `mlflow server` (make serve)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, prefect_cli, serve_team, stop_team

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("served")
    env = None
    try:
        env = serve_team(home)
        yield env, home
    finally:
        stop_team(home, env)


def test_servers_bind_loopback_only(served):
    import psutil

    env, _ = served
    ports = {
        int(env["PREFECT_API_URL"].split(":")[2].split("/")[0]),
        int(env["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]),
    }
    listening = [
        c.laddr
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
    ]
    assert {a.port for a in listening} == ports, listening
    assert all(a.ip == "127.0.0.1" for a in listening), listening


def test_deployment_runs_train_then_promote(served):
    env, home = served
    listed = prefect_cli(env, "deployment", "ls")
    for name in ("train-ppo/train-ppo", "promote-model/promote", "sweep-ppo/sweep"):
        assert name in listed.stdout, listed.stdout
    bare = prefect_cli(env, "deployment", "run", "train-ppo")
    assert bare.returncode != 0  # Prefect insists on <flow>/<deployment>
    # the weekly schedule retrains (a challenger on fresh seeds), it does not re-run a cached training
    inspect = prefect_cli(env, "deployment", "inspect", "train-ppo/train-ppo")
    assert "weekly-retrain" in inspect.stdout and "'retrain': True" in inspect.stdout, inspect.stdout[-3000:]
    run = prefect_cli(
        env, "deployment", "run", "train-ppo/train-ppo", "-p", 'overrides={"gate.episodes": 10}', "--watch"
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Completed" in run.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='ppo-cartpole'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_model_version_by_alias("ppo-cartpole", "champion").version == "1"

    promo = prefect_cli(
        env,
        "deployment",
        "run",
        "promote-model/promote",
        "-p",
        "version=1",
        "-p",
        'overrides={"gate.episodes": 10}',
        "--watch",
    )
    assert promo.returncode == 0, promo.stdout[-4000:] + promo.stderr[-2000:]
    assert client.get_model_version("ppo-cartpole", "1").tags["gate.passed"] == "true"

    # the same promotion without a worker, as a CI job would run it
    cli = subprocess.run(
        [sys.executable, "-m", "flows.cli", "promote", "--version", "1", "--set", "gate.episodes=10"],
        env={**env, "PREFECT_API_URL": env["PREFECT_API_URL"]},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads(cli.stdout.strip().splitlines()[-1])["champion"] == "1"


def test_another_web_page_cannot_drive_the_prefect_api(served):
    import urllib.error
    import urllib.request

    env, _ = served
    api = env["PREFECT_API_URL"]
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    # a browser's preflight from another origin is not allowed
    pre = urllib.request.Request(
        f"{api}/deployments/filter",
        method="OPTIONS",
        headers={
            **evil,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    try:
        with urllib.request.urlopen(pre, timeout=10) as r:
            allowed = r.headers.get("access-control-allow-origin")
    except urllib.error.HTTPError as e:
        allowed = e.headers.get("access-control-allow-origin")
    assert allowed not in ("*", "http://evil.example"), allowed
    # a cross-origin POST that creates a flow run of train-ppo (what a hostile page's form would send)
    listed = urllib.request.Request(
        f"{api}/deployments/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(listed, timeout=10)  # no CSRF token: even a local script is refused
    assert refused.value.code == 403
    run = urllib.request.Request(
        f"{api}/flow_runs/",
        data=json.dumps({"flow_id": "00000000-0000-0000-0000-000000000000"}).encode(),
        method="POST",
        headers=evil,
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(run, timeout=10)
    assert e.value.code == 403
    # Prefect's own client (CLI, worker) fetches the token and still works
    assert prefect_cli(env, "deployment", "ls").returncode == 0


def _status(url: str, host: str) -> int:
    """The HTTP status of a GET of ``url`` sent with the given ``Host`` header (as a page on a rebinding
    domain, resolved to 127.0.0.1, would send it)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def test_servers_refuse_a_foreign_host_header(served):
    """DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 reaches the servers with
    ``Host: evil.example``; both refuse it, and still answer their own names."""
    env, _ = served
    api = env["PREFECT_API_URL"]
    prefect_port = api.split(":")[2].split("/")[0]
    mlflow = env["MLFLOW_TRACKING_URI"]
    mlflow_port = mlflow.rsplit(":", 1)[1]
    search = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
    for url, port in ((f"{api}/admin/version", prefect_port), (search, mlflow_port)):
        assert _status(url, "evil.example") in (400, 403), url
        assert _status(url, f"evil.example:{port}") in (400, 403), url
        assert _status(url, f"127.0.0.1:{port}") == 200, url
        assert _status(url, f"localhost:{port}") == 200, url
    # the clients still work: Prefect's CLI and MLflow's client
    assert prefect_cli(env, "deployment", "ls").returncode == 0
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow).search_experiments(max_results=1) is not None
