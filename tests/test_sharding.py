"""Several devices: the seed (or env) axis is sharded with jax.sharding and training follows the
single-device run. The test session runs on one CPU device (conftest: PPO_CPU_DEVICES=1); the sharded
runs happen in a subprocess where ppo splits the CPU into two devices, as it does by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ppo import PPOTrainer
from tests.helpers import ROOT, small_config

CASES = {"seed": {}, "env": {"train.seeds": [3]}}  # 2 seeds → 1 per device; 1 seed → 4 of its 8 envs each

SCRIPT = """
import json, sys
import jax, numpy as np
from tests.helpers import small_config
from ppo import PPOTrainer
cases, out = json.loads(sys.argv[1]), {}
for name, extra in cases.items():
    trainer = PPOTrainer(config=small_config(**{"train.checkpoint_dir": "ck-" + name, **extra}))
    if name == "env":  # what an accelerator pair gets for one seed (on CPUs ppo keeps one seed whole)
        from jax.sharding import Mesh
        from ppo.sharding import Plan
        assert trainer.sharding is None
        trainer._sharding = Plan(Mesh(np.array(jax.devices()), ("env",)), "env")
    result = trainer.train()
    leaves = jax.tree.leaves(trainer.state.params)
    np.savez(sys.argv[2] + "/" + name + ".npz", *[np.asarray(x) for x in leaves])
    out[name] = {"axis": trainer.sharding and trainer.sharding.axis, "devices": jax.device_count(),
                 "shards": len(jax.tree.leaves(trainer.state.obs)[0].sharding.device_set),
                 "history": [[h["episodes"], h["avg_reward"]] for h in result["history"]]}
print(json.dumps(out))
"""


def test_sharded_training_follows_the_single_device_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path))
    env = {**os.environ, "PPO_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert jax.device_count() == 1
    for name, extra in CASES.items():
        got = sharded[name]
        assert (got["axis"], got["devices"], got["shards"]) == (name, 2, 2)
        single = PPOTrainer(config=small_config(**{"train.checkpoint_dir": "single-" + name, **extra}))
        result = single.train()
        assert single.sharding is None
        # the same episodes with the same returns, chunk by chunk ...
        assert got["history"] == [[h["episodes"], h["avg_reward"]] for h in result["history"]]
        # ... and the same parameters up to float32 rounding (XLA reduces a split batch in another order)
        theirs = np.load(tmp_path / f"{name}.npz")
        for i, leaf in enumerate(jax.tree.leaves(single.state.params)):
            np.testing.assert_allclose(theirs[f"arr_{i}"], np.asarray(leaf), rtol=0, atol=1e-5)


def test_layouts():
    from types import SimpleNamespace

    from ppo.sharding import plan_for

    cpu = jax.devices()[0]
    assert plan_for(small_config(), [cpu]) is None
    assert plan_for(small_config(), [cpu, cpu]).axis == "seed"
    six = plan_for(small_config(**{"train.seeds": [0, 1, 2, 3, 4, 5]}), [cpu] * 4)
    assert (six.axis, six.devices) == ("seed", 3)  # as many devices as divide the seeds
    assert plan_for(small_config(**{"train.seeds": [0, 1, 2]}), [cpu, cpu]) is None  # quietly, on a CPU
    assert plan_for(small_config(**{"train.seeds": [0]}), [cpu, cpu]) is None
    gpus = [SimpleNamespace(platform="gpu")] * 2
    with pytest.warns(RuntimeWarning, match="neither the 3 seeds nor the 5 envs divide"):
        assert (
            plan_for(
                small_config(
                    **{
                        "train.seeds": [0, 1, 2],
                        "env.num_envs": 5,
                        "ppo.batch_size": 640,
                        "ppo.minibatch_size": 64,
                    }
                ),
                gpus,
            )
            is None
        )
