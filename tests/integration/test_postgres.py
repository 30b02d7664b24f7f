"""The team set-up on a real PostgreSQL (PPO_DB=postgres make serve): the train-ppo deployment runs end
to end with MLflow and Prefect both on the cluster in $PPO_HOME/postgres, and no sqlite file appears."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.helpers import free_port, prefect_cli, serve_team, stop_team

pytestmark = pytest.mark.integration


def _sql(home: Path, db: str, query: str) -> str:
    port = (home / "run" / "postgres.port").read_text().strip()
    env = {**os.environ, "PGPASSWORD": (home / "run" / "postgres.pw").read_text().strip()}
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", port, "-U", "ppo", "-d", db, "-tAqc", query],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def test_train_deployment_on_postgres():
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and not shutil.which("pg_config"):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing in CI: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    # PostgreSQL runs as the postgres user (never as root): its data must sit where that user can reach
    home = Path(tempfile.mkdtemp(prefix="ppo-pg-"))
    home.chmod(0o755)
    pg_port = free_port()
    env = None
    try:
        env = serve_team(home, PPO_DB="postgres", PG_PORT=str(pg_port))
        listening = {
            c.laddr.ip
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == pg_port
        }
        assert listening == {"127.0.0.1"}
        run = prefect_cli(
            env,
            "deployment",
            "run",
            "train-ppo/train-ppo",
            "-p",
            'overrides={"gate.episodes": 10}',
            "--watch",
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]

        assert _sql(home, "mlflow", "SELECT name FROM registered_models") == "ppo-cartpole"
        assert _sql(home, "mlflow", "SELECT alias, version FROM registered_model_aliases") == "champion|1"
        assert _sql(home, "mlflow", "SELECT status FROM runs") == "FINISHED"
        states = _sql(home, "prefect", "SELECT state_type FROM flow_run").split()
        assert sorted(set(states)) == ["COMPLETED", "SCHEDULED"] and states.count("COMPLETED") == 1, states
        # (SCHEDULED: the weekly retraining runs Prefect has planned, also in PostgreSQL)
        assert not list(home.rglob("*.db")), "a sqlite database was created next to PostgreSQL"
    finally:
        stop_team(home, env)
        try:
            assert not (home / "run" / "postgres.started").exists()
            assert not (home / "postgres" / "postmaster.pid").exists(), (
                "PostgreSQL still running after make stop"
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
