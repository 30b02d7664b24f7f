"""A promotion that dies while it holds the promotion lock does not keep the lock (issue 16, item 8).

``ppo promote`` is killed (SIGKILL, as the OOM killer does) while its promote task holds the lock; the
next ``ppo promote`` of the same model must take the lock at once and move the champion, instead of
waiting out its 600 s timeout on every attempt, and the dead run's flow run ends Crashed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from ppo import PPOTrainer, tracking
from tests.helpers import ROOT, small_config

pytestmark = pytest.mark.reliability


def test_a_promotion_killed_inside_the_lock_does_not_keep_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    cfg = small_config(**{"train.seeds": [0], "tracking.enabled": True})
    run_id = PPOTrainer(config=cfg, enable_mlflow=True).train()["run_id"]
    version = tracking.register_model(run_id, "ppo-cartpole")
    path = tmp_path / "promote.yaml"  # a gate this version passes
    path.write_text(
        yaml.safe_dump(
            small_config(**{"gate.min_return": 0, "gate.episodes": 5, "gate.min_seeds": 1}).to_dict()
        )
    )
    env = {**os.environ, "PPO_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect")}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PPO_FAULTS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "flows.cli", "promote", "--version", version, "-c", str(path)]

    log = tmp_path / "holder.log"
    with open(log, "w") as err:  # holds the lock 120 s (a slow registry), then is killed inside it
        holder = subprocess.Popen(
            cmd,
            env={**env, "PPO_FAULTS": "promote=delay:120"},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 120
            while "registered ppo-cartpole version" not in log.read_text() and time.time() < deadline:
                assert holder.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(5)  # the promote task starts and takes the lock, then sleeps in it
            assert holder.poll() is None, log.read_text()[-3000:]
        finally:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
    assert tracking.get_champion("ppo-cartpole") is None

    start = time.time()
    nxt = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = nxt.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(nxt.pid, signal.SIGKILL)
        _, err = nxt.communicate()
        raise AssertionError(
            f"the next promotion still waits for the dead one's lock: {err[-3000:]}"
        ) from None
    assert nxt.returncode == 0, err[-3000:]
    assert time.time() - start < 60
    assert tracking.get_champion("ppo-cartpole") == version
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        states = [s for (s,) in db.execute("SELECT state_type FROM flow_run ORDER BY created")]
    assert states == ["CRASHED", "COMPLETED"]
