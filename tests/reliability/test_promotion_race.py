"""Two `promote-model` runs at once for different versions: the alias ends on one gate-passing version,
the other run reports that it lost the race, and the registry stays consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ppo import PPOTrainer, tracking
from tests.helpers import ROOT, small_config

pytestmark = pytest.mark.reliability


def test_concurrent_promotions_leave_one_champion(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    versions = []
    for seed in (0, 1):  # two registered, never-gated versions
        cfg = small_config(**{"train.seeds": [seed], "tracking.enabled": True})
        run_id = PPOTrainer(config=cfg, enable_mlflow=True).train()["run_id"]
        versions.append(tracking.register_model(run_id, "ppo-cartpole"))
    assert versions == ["1", "2"] and tracking.get_champion("ppo-cartpole") is None

    path = tmp_path / "promote.yaml"  # both pass this gate: the race, not the statistics, decides
    path.write_text(
        yaml.safe_dump(
            small_config(**{"gate.min_return": 0, "gate.episodes": 5, "gate.min_seeds": 1}).to_dict()
        )
    )
    # both gates finish while the first promotion holds the lock (a slow registry, 4 s): without the lock
    # both would read "no champion" and both would move the alias
    env = {
        **os.environ,
        "PPO_HOME": str(home),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PPO_FAULTS": "promote=delay:4",
    }
    subprocess.run(
        [sys.executable, "-m", "prefect", "global-concurrency-limit", "ls"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )  # create the embedded Prefect database once, up front
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "promote", "--version", v, "-c", str(path)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = {v: p.returncode for v, p in zip(versions, procs, strict=True)}
    assert sorted(codes.values()) == [0, 5], (codes, [o[1][-3000:] for o in outs])
    winner = next(v for v, c in codes.items() if c == 0)
    loser = next(v for v, c in codes.items() if c == 5)
    summaries = {
        v: json.loads(out[0].strip().splitlines()[-1]) for v, out in zip(versions, outs, strict=True)
    }
    assert summaries[winner]["promoted"] and not summaries[winner]["lost_race"]
    assert summaries[loser]["lost_race"] and summaries[loser]["champion"] == winner
    assert "lost the race" in outs[versions.index(loser)][1]

    client = tracking.client()
    assert tracking.get_champion("ppo-cartpole") == winner
    tags = {v: client.get_model_version("ppo-cartpole", v).tags for v in versions}
    assert tags[winner]["gate.passed"] == "true" and tags[loser]["gate.passed"] == "true"
    assert tags[loser]["promote.lost_race_to"] == winner
    aliases = {v: client.get_model_version("ppo-cartpole", v).aliases for v in versions}
    assert aliases == {winner: ["champion"], loser: []}
