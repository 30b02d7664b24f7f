"""An unreachable Prefect API gives one readable message after bounded retries, and nothing starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("command", [["pipeline"], ["promote", "--version", "1"]])
def test_unreachable_prefect_api(tmp_path, command):
    dead = f"http://127.0.0.1:{free_port()}/api"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": dead, "PPO_HOME": str(tmp_path / "h")},
    )
    assert proc.returncode == 1
    assert f"Prefect API {dead} is unreachable after 3 attempts" in proc.stderr
    assert "Traceback" not in proc.stderr and time.time() - start < 60
    assert not (tmp_path / "h" / "checkpoints").exists()
    if command == ["pipeline"]:
        # its first line comes before the API is tried (cold, the flow's own lines start ~9 s later): what
        # it trains, on which seeds (configs/cartpole.yaml, the default); the API's message after it
        first = proc.stderr.splitlines()[0]
        assert first == "pipeline configs/cartpole.yaml: CartPole-v1, seeds [0, 1, 2, 3, 4]; starting Prefect"
        assert "unreachable" in proc.stderr.split(first, 1)[1]
