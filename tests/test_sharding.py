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

# 2 seeds → 1 per device; 1 seed → 4 of its 8 envs each; 3 seeds → 2 rows per device, one a padding row
CASES = {"seed": {}, "env": {"train.seeds": [3]}, "padded": {"train.seeds": [0, 1, 2]}}

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
    placed = trainer.runtime.on_devices(trainer.state)  # where the next chunk would run it
    obs = jax.tree.leaves(placed.obs)[0]
    out[name] = {"axis": trainer.sharding and trainer.sharding.axis, "devices": jax.device_count(),
                 "shards": len(obs.sharding.device_set), "rows": obs.shape[0],
                 "state_rows": jax.tree.leaves(trainer.state.obs)[0].shape[0],
                 "history": [[h["episodes"], h["avg_reward"]] for h in result["history"]]}
# padded rows, stopped after 2 chunks and resumed: the same parameters as the uninterrupted "padded" run
cfg = small_config(**{"train.checkpoint_dir": "ck-resume", **cases["padded"]})
PPOTrainer(config=cfg).train(callback=lambda info: info["env_steps"] < 1280)
resumed = PPOTrainer(config=cfg)
out["resumed_from_chunk"] = resumed.train(resume=True)["resumed_from_chunk"]
theirs = np.load(sys.argv[2] + "/padded.npz")
out["resume_equal"] = all(np.array_equal(theirs[f"arr_{i}"], np.asarray(x))
                          for i, x in enumerate(jax.tree.leaves(resumed.state.params)))
from ppo.population import train_population
pop = train_population(small_config(**{"train.seeds": [0]}), MEMBERS)  # 3 rows: padded to 4 on 2 devices
out["population"] = pop.returns.tolist()
print(json.dumps(out))
"""

MEMBERS = [{"ppo.learning_rate": lr} for lr in (1e-3, 3e-3, 2e-3)]
SCRIPT = SCRIPT.replace("cases, out =", f"MEMBERS = {MEMBERS!r}\ncases, out =")


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
        axis = "seed" if name == "padded" else name
        seeds = len(extra.get("train.seeds", [0, 1]))
        assert (got["axis"], got["devices"], got["shards"]) == (axis, 2, 2)
        # the padded run computes 4 rows, 2 per device, and hands back the 3 seeds' rows
        assert (got["rows"], got["state_rows"]) == ((4, 3) if name == "padded" else (seeds, seeds))
        single = PPOTrainer(config=small_config(**{"train.checkpoint_dir": "single-" + name, **extra}))
        result = single.train()
        assert single.sharding is None
        # the same episodes with the same returns, chunk by chunk ...
        assert got["history"] == [[h["episodes"], h["avg_reward"]] for h in result["history"]]
        # ... and the same parameters up to float32 rounding (XLA reduces a split batch in another order)
        theirs = np.load(tmp_path / f"{name}.npz")
        for i, leaf in enumerate(jax.tree.leaves(single.state.params)):
            np.testing.assert_allclose(theirs[f"arr_{i}"], np.asarray(leaf), rtol=0, atol=1e-5)
    assert (sharded["resumed_from_chunk"], sharded["resume_equal"]) == (2, True)
    # a population whose rows do not divide among the devices (padded) learns what it learns on one
    from ppo.population import train_population

    pop = train_population(small_config(**{"train.seeds": [0]}), MEMBERS)
    np.testing.assert_allclose(np.array(sharded["population"]), pop.returns, rtol=0, atol=1e-4)


def test_layouts():
    from types import SimpleNamespace

    from ppo.sharding import plan_for

    cpu = jax.devices()[0]
    assert plan_for(small_config(), [cpu]) is None
    assert plan_for(small_config(), [cpu, cpu]).axis == "seed"
    six = plan_for(small_config(**{"train.seeds": [0, 1, 2, 3, 4, 5]}), [cpu] * 4)
    assert (six.axis, six.devices) == ("seed", 3)  # as many devices as divide the seeds
    assert six.rows is None  # no padding
    # seeds no device count divides are padded on a CPU: 3 seeds -> 2 rows per device, the 4th an idle copy
    three = plan_for(small_config(**{"train.seeds": [0, 1, 2]}), [cpu, cpu])
    assert (three.axis, three.devices, three.rows) == ("seed", 2, 4)
    five = plan_for(small_config(**{"train.seeds": [0, 1, 2, 3, 4]}), [cpu] * 4)
    assert (five.devices, five.rows) == (3, 6)  # 2 rows per device: as few as 4 devices give, on 3 of them
    seven = plan_for(small_config(**{"train.seeds": list(range(7))}), [cpu] * 2)
    assert (seven.devices, seven.rows) == (2, 8)  # not 7 rows on one device
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
