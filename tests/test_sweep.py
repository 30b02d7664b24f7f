"""Sweeps: the search space expands reproducibly and is validated up front; the sweep-ppo flow runs two
trials on a real local Ray under Prefect's test harness, as nested MLflow runs, and reports the best trial's
score from held-out episodes (not from the episodes that chose it)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from ppo.config import ConfigError, load_config
from ppo.sweep import SweepSpec, expand, load_sweep, trial_configs
from tests.helpers import small_config


def _spec(tmp_path, data):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _two_trials(tmp_path):
    """A sweep file of two tracked two-seed trials (learning rates 1e-3, 3e-3), 1280 env steps each: one
    population."""
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(small_config(**{"tracking.enabled": True, "train.seeds": [0, 1]}).to_dict())
    )
    return _spec(
        tmp_path,
        {
            "base": str(base),
            "eval_episodes": 3,
            "fixed": {"train.max_env_steps": 1280},
            "space": {"ppo.learning_rate": [1e-3, 3e-3]},
        },
    )


def test_grid_and_random_expansion():
    grid = SweepSpec(space={"ppo.learning_rate": [1e-3, 3e-3], "ppo.epochs_per_update": [2, 4, 8]})
    assert len(expand(grid)) == 6 and expand(grid)[0] == {
        "ppo.learning_rate": 1e-3,
        "ppo.epochs_per_update": 2,
    }
    rnd = SweepSpec(
        method="random",
        trials=50,
        seed=3,
        space={
            "ppo.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "env.num_envs": {"low": 2, "high": 8, "int": True},
            "ppo.gae_lambda": [0.9, 0.95],
        },
    )
    points = expand(rnd)
    assert points == expand(rnd)  # seeded
    assert all(1e-4 <= p["ppo.learning_rate"] <= 1e-2 for p in points)
    assert {p["env.num_envs"] for p in points} <= set(range(2, 9)) and all(
        isinstance(p["env.num_envs"], int) for p in points
    )
    assert {p["ppo.gae_lambda"] for p in points} == {0.9, 0.95}


@pytest.mark.parametrize(
    "data,expected",
    [
        (
            {"method": "grid", "space": {"ppo.learning_rate": {"low": 1e-4, "high": 1e-2}}},
            "grid search needs lists",
        ),
        ({"method": "random", "space": {"ppo.gamma": [0.9]}}, "random search needs trials"),
        ({"space": {}}, "space"),
        (
            {"method": "random", "trials": 2, "space": {"ppo.learning_rate": {"low": 1, "high": 0.1}}},
            "must be < high",
        ),
        ({"space": {"ppo.gamma": [0.9]}, "budget": 3}, "budget"),
        ({"method": "pbt", "trials": 4, "space": {"ppo.gamma": [0.9, 0.99]}}, "needs a pbt section"),
        (
            {
                "method": "pbt",
                "trials": 4,
                "pbt": {"interval": 5},
                "space": {"ppo.epochs_per_update": [2, 4]},
            },
            "perturbs numeric shape-free hyperparameters only",
        ),
        ({"method": "pbt", "trials": 1, "pbt": {"interval": 5}, "space": {"ppo.gamma": [0.9]}}, "2 or more"),
        (
            {"method": "random", "trials": 2, "pbt": {"interval": 5}, "space": {"ppo.gamma": [0.9]}},
            "method: pbt",
        ),
    ],
)
def test_bad_sweep_files_are_named(tmp_path, data, expected):
    with pytest.raises(ConfigError, match=expected):
        load_sweep(_spec(tmp_path, data))


def test_every_trial_is_validated_before_any_runs(tmp_path):
    spec = load_sweep(_spec(tmp_path, {"space": {"ppo.gamma": [0.9, 1.5]}}))
    with pytest.raises(ConfigError, match=r"(?s)sweep trial 1 \{.ppo.gamma.: 1.5\}.*ppo.gamma.*0.0 .. 1.0"):
        trial_configs(spec)


def test_without_ray_the_flow_falls_back_with_a_message(monkeypatch):
    from flows import sweep

    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the extra were not installed
    runner, note = sweep.task_runner()
    assert type(runner).__name__ == "ThreadPoolTaskRunner" and "pip install 'ppo-pipeline[ray]'" in note


def test_selection_and_heldout_episodes_are_disjoint_documented_ranges():
    from ppo.evaluate import STREAM_SPAN, STREAMS, stream_seed
    from ppo.sweep import eval_seeds, seeds_note

    for episodes in (1, 3, 20, 10_000):
        seeds = eval_seeds(episodes)
        assert seeds["selection"] == (
            stream_seed("sweep_select", 0, episodes),
            stream_seed("sweep_select", 0, episodes) + episodes,
        )
        assert seeds["heldout"] == (
            stream_seed("sweep_heldout", 0, episodes),
            stream_seed("sweep_heldout", 0, episodes) + episodes,
        )
        assert not set(range(*seeds["selection"])) & set(range(*seeds["heldout"]))
        for start, stop in seeds.values():  # inside its own stream's range: no other evaluation's episodes
            assert start // STREAM_SPAN == (stop - 1) // STREAM_SPAN
    import ppo.sweep

    assert STREAM_SPAN == 2**28  # the module docstring states the ranges in these terms
    assert f"[{STREAMS['sweep_select']} * 2**28, " in ppo.sweep.__doc__
    assert f"[{STREAMS['sweep_heldout']} * 2**28, " in ppo.sweep.__doc__
    note = seeds_note(3)
    a, b = eval_seeds(3)["selection"]
    c, d = eval_seeds(3)["heldout"]
    assert f"[{a}, {b})" in note and f"[{c}, {d})" in note
    assert "score_selection" in note and "score_heldout" in note


def _requires_ray() -> None:
    """Skip without the ray extra, except in CI (``$CI`` set), where its absence is a broken install."""
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("prefect-ray is missing in CI: the ray extra is part of `make test`'s install")
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]', part of `make test`'s install)")


def test_ray_is_required_in_ci(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if the extra were not installed
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="missing in CI"):
        _requires_ray()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _requires_ray()


def test_sweep_flow_runs_trials_on_local_ray_as_nested_runs(tmp_path, monkeypatch):
    _requires_ray()
    import numpy as np
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import RUNNER, sweep_ppo
    from ppo import tracking
    from ppo.config import build_config
    from ppo.evaluate import evaluate_params_list, stream_seed
    from ppo.trainer import PPOTrainer

    assert type(RUNNER).__name__ == "RayTaskRunner"
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    path = _two_trials(tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        state = sweep_ppo(str(path), return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert out["best_trial"] in (0, 1) and out["best_params"]["ppo.learning_rate"] in (1e-3, 3e-3)
    assert os.getpid() not in out["trial_pids"]  # the trials ran in Ray worker processes
    # the two trials differ only in the learning rate: one group, one population, one Ray task
    assert len(out["trial_pids"]) == 1

    client = tracking.client()
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.best_trial"] == str(out["best_trial"])
    assert parent.data.params["sweep.groups"] == "1"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["trial-0", "trial-1"]
    assert all(c.info.status == "FINISHED" and "sweep/score_selection" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.csv", "sweep.png", "best_config.yaml", "sweep.yaml"} <= artifacts
    best = load_config(out["best_config"])
    assert best.ppo.learning_rate == out["best_params"]["ppo.learning_rate"]
    assert best.train.max_env_steps == 1280

    # the reported score is the chosen trial's, re-scored on held-out episodes that did not choose it
    selection, heldout = stream_seed("sweep_select", 0, 3), stream_seed("sweep_heldout", 0, 3)
    assert not set(range(selection, selection + 3)) & set(range(heldout, heldout + 3))
    assert out["eval_seeds"] == {"selection": [selection, selection + 3], "heldout": [heldout, heldout + 3]}
    trainer = PPOTrainer(
        config=build_config(
            best.to_dict(), {"train.checkpoint_dir": f"sweeps/{parent.info.run_id}/trial-{out['best_trial']}"}
        )
    )
    trainer.restore()  # the best trial's trained seeds, from its checkpoint
    assert len(trainer.seed_params) == 2

    def score(seed: int) -> float:
        return float(np.mean(evaluate_params_list(trainer.seed_params, "CartPole-v1", 3, seed).mean(axis=1)))

    assert out["best_score_heldout"] == pytest.approx(score(heldout))
    assert out["best_score_selection"] == pytest.approx(score(selection))
    assert parent.data.metrics["sweep/best_score_heldout"] == pytest.approx(score(heldout))
    assert parent.data.metrics["sweep/best_score_selection"] == pytest.approx(score(selection))
    assert (
        "sweep/best_score" not in parent.data.metrics
    )  # no unlabelled score to mistake for the held-out one
    by_name = {c.info.run_name: c for c in children}
    chosen = by_name[f"trial-{out['best_trial']}"].data.metrics
    assert chosen["sweep/score_heldout"] == pytest.approx(score(heldout))
    assert chosen["sweep/score_selection"] == pytest.approx(score(selection))
    other = by_name[f"trial-{1 - out['best_trial']}"].data.metrics
    assert "sweep/score_heldout" not in other  # only the chosen trial is scored on held-out episodes
    rows = pd.read_csv(out["table"]).to_dict("records")
    assert rows[0]["trial"] == out["best_trial"]
    assert rows[0]["score_heldout"] == pytest.approx(score(heldout), abs=0.01)
    assert np.isnan(rows[1]["score_heldout"])


def test_trials_are_grouped_by_what_shapes_their_program(tmp_path):
    from pathlib import Path

    from ppo.sweep import group_trials

    spec = load_sweep(
        _spec(
            tmp_path,
            {
                "method": "random",
                "trials": 12,
                "space": {
                    "ppo.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
                    "ppo.gamma": [0.98, 0.99],
                    "ppo.epochs_per_update": [2, 4],  # shapes the program: one group per value
                },
            },
        )
    )
    configs = [cfg for _, cfg in trial_configs(spec)]
    groups = group_trials(configs)
    assert sorted(i for g in groups for i in g) == list(range(12))
    assert all(g == sorted(g) for g in groups)  # trial order within a group
    assert sorted({configs[g[0]].ppo.epochs_per_update for g in groups}) == [2, 4] and len(groups) == 2
    for group in groups:
        assert len({configs[i].ppo.epochs_per_update for i in group}) == 1
    assert group_trials(configs, populations=False) == [[i] for i in range(12)]

    # the shipped sweep swaps only shape-free keys: its trials are one population
    root = Path(__file__).resolve().parents[1]
    shipped_spec = load_sweep(root / "configs" / "sweep-cartpole.yaml")
    shipped = [cfg for _, cfg in trial_configs(shipped_spec, root=root)]
    assert group_trials(shipped) == [list(range(len(shipped)))]

    # host-side envs step in Python: every trial is a group of its own (a population needs a JAX env)
    host = [
        load_config(root / "configs" / "lunarlander.yaml", {"ppo.learning_rate": lr}) for lr in (1e-4, 3e-4)
    ]
    assert group_trials(host) == [[0], [1]]


def test_diverged_trials_are_reported_and_never_best():
    from ppo.sweep import best_trial, comparison_table

    ok = {
        "trial": 0,
        "params": {"ppo.learning_rate": 1e-3},
        "score_selection": 120.0,
        "std_selection": 3.0,
        "env_steps": 100,
        "converged": False,
        "wall_s": 1.0,
    }
    nan = float("nan")
    bad = {
        "trial": 1,
        "params": {"ppo.learning_rate": 1.0},
        "score_selection": nan,
        "std_selection": nan,
        "env_steps": 0,
        "converged": False,
        "wall_s": 0.0,
        "error": "non-finite loss at update 3 (seed 0)",
    }
    assert best_trial([bad, ok])["trial"] == 0
    rows = comparison_table([bad, ok], {"trial": 0, "score_heldout": 110.0, "std_heldout": 4.0})
    assert [(r["trial"], r["status"]) for r in rows] == [(0, "ok"), (1, "diverged")]
    assert (rows[0]["score_selection"], rows[0]["score_heldout"]) == (120.0, 110.0)
    assert rows[1]["score_heldout"] is None


def test_the_sweep_table_fits_a_terminal_and_says_how_the_best_was_chosen(tmp_path, capsys):
    from flows.cli import _print_sweep

    rows = [
        {
            "trial": t,
            "ppo.learning_rate": lr,
            "ppo.clip_epsilon": 0.2,
            "ppo.entropy_coef": 0.01,
            "ppo.gae_lambda": 0.95,
            "status": "ok",
            "score_selection": 500.0 if t < 6 else 120.5,
            "std_selection": 0.0,
            "score_heldout": 500.0 if t == 2 else None,
            "std_heldout": 0.0 if t == 2 else None,
            "env_steps": 150_000 - t,
            "converged": True,
            "wall_s": 9.5,
            "mlflow_run": "0123456789abcdef0123456789abcdef",
        }
        for t, lr in enumerate([1e-3, 3e-3, 1e-2, 3e-4, 2e-3, 0.004334726365239161, 1e-4, 7e-3])
    ]
    table = tmp_path / "sweep.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    summary = {
        "best_trial": 5,
        "best_score_heldout": 500.0,
        "best_config": str(tmp_path / "best_config.yaml"),
        "plot": str(tmp_path / "sweep.png"),
        "table": str(table),
    }
    _print_sweep(summary)
    out = capsys.readouterr().err
    # the table and the rule fit the terminal (80 columns when not one); the two paths are what they are
    lines = [line.rstrip() for line in out.splitlines() if not line.startswith(("best config:", "plot:"))]
    assert max(len(line) for line in lines) <= 80, out
    assert "0123456789abcdef" not in out  # run ids are in the full table (csv, artifact), not here
    assert "learning" in out and "clip" in out  # swept values by their last name
    # four swept keys (the shipped sweep's): the headers wrap, a value is never split over two lines
    assert "0.004335" in out and "150,000" in out, out
    header = set(out.split("─")[0].split())  # the words of the title and the header's lines
    assert {"learning", "rate", "score", "held-", "out", "env", "steps"} <= header, header
    assert "tie" in out and "fewest env steps" in out, out
    assert "trials 0, 1, 2, 3, 4, 5 tie at 500" in " ".join(out.split()), out


def test_pbt_interval_must_fall_between_chunks(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(small_config().to_dict()))  # 5 updates per chunk
    spec = load_sweep(
        _spec(
            tmp_path,
            {
                "base": str(base),
                "method": "pbt",
                "trials": 2,
                "pbt": {"interval": 7},
                "space": {"ppo.gamma": [0.9]},
            },
        )
    )
    with pytest.raises(
        ConfigError, match=r"pbt.interval: 7 updates is not a multiple of train.updates_per_chunk \(5\)"
    ):
        trial_configs(spec)


def test_pbt_on_a_host_env_is_refused_before_anything_trains(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    spec = load_sweep(
        _spec(
            tmp_path,
            {
                "base": str(root / "configs" / "lunarlander.yaml"),
                "method": "pbt",
                "trials": 2,
                "pbt": {"interval": 10},
                "space": {"ppo.gamma": [0.98, 0.99]},
            },
        )
    )
    with pytest.raises(ConfigError, match="LunarLander-v3 trains on host-side envs"):
        trial_configs(spec)


def test_pbt_sweep_exploits_inside_one_program_and_records_the_lineage(tmp_path, monkeypatch):
    """method: pbt on a real local Ray: four CartPole members, an exploit step after every chunk; each
    trial's run carries its lineage, its final values are what its checkpointed state trains with, and the
    sweep's best config holds the best trial's final values."""
    _requires_ray()
    import json

    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep_ppo
    from ppo import tracking
    from ppo.config import build_config
    from ppo.trainer import PPOTrainer

    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(small_config(**{"tracking.enabled": True, "train.seeds": [0]}).to_dict()))
    path = _spec(
        tmp_path,
        {
            "base": str(base),
            "method": "pbt",
            "trials": 4,
            "seed": 3,
            "eval_episodes": 2,
            "pbt": {"interval": 5, "fraction": 0.25, "factors": [0.5, 2.0]},
            "fixed": {"train.max_env_steps": 128 * 20},
            "space": {"ppo.learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}},
        },
    )
    with prefect_test_harness(server_startup_timeout=120):
        state = sweep_ppo(str(path), return_state=True)
    assert state.is_completed(), state
    out = state.result()
    assert len(out["trial_pids"]) == 1  # one population, one task

    client = tracking.client()
    parent = client.get_run(out["parent_run_id"])
    assert "pbt_lineage.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    lineages = {c.info.run_name: json.loads(c.data.tags["pbt.lineage"]) for c in children}
    events = [e for lineage in lineages.values() for e in lineage]
    assert events, "no exploit step happened"  # 4 chunks, an exploit after each of the first three
    assert {e["update"] for e in events} <= {5, 10, 15, 20}
    for child in children:
        lineage = lineages[child.info.run_name]
        final = float(child.data.tags["pbt.final.ppo.learning_rate"])
        history = client.get_metric_history(child.info.run_id, "pbt/learning_rate")
        assert history and history[-1].value == pytest.approx(final)
        if lineage:  # the value of its last exploit is the one it ended with
            assert final == pytest.approx(lineage[-1]["hparams"]["learning_rate"])
            assert all(e["donor"] != e["member"] and e["donor_fitness"] > e["fitness"] for e in lineage)
        # the trial's checkpointed state trains with its final value
        trial = int(child.info.run_name.removeprefix("trial-"))
        cfg = load_config(str(base), {"train.max_env_steps": 128 * 20})
        cfg = build_config(
            cfg.to_dict(), {"train.checkpoint_dir": f"sweeps/{parent.info.run_id}/trial-{trial}"}
        )
        trainer = PPOTrainer(config=cfg)
        trainer.restore()
        assert float(np.asarray(trainer.state.hp.learning_rate)[0]) == pytest.approx(final)
    best = load_config(out["best_config"])
    by_trial = {int(c.info.run_name.removeprefix("trial-")): c for c in children}
    assert best.ppo.learning_rate == pytest.approx(
        float(by_trial[out["best_trial"]].data.tags["pbt.final.ppo.learning_rate"])
    )


def test_a_single_group_trains_here_unless_a_ray_cluster_is_named(monkeypatch):
    from ppo.sweep import trains_here

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert trains_here(1) and not trains_here(2)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert not trains_here(1)


def test_ppo_sweep_of_one_population_trains_it_in_its_own_process(tmp_path, monkeypatch):
    """`ppo sweep` with one group: no Ray (whose start-up would be the sweep's largest cost), the program
    compiled while the Prefect API starts, the trials still nested MLflow runs, the best one scored on
    held-out episodes. Run from another directory, with the sweep's ``base`` relative to the project (as
    the shipped sweep's is): the command resolves it as the flow does (it used to resolve it against its
    working directory and exit 2, "config file ... does not exist")."""
    import json
    import os
    import subprocess

    from ppo import tracking
    from tests.helpers import ROOT, venv_env

    home = tmp_path / "home"
    path = _two_trials(tmp_path)
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "base": os.path.relpath(spec["base"], ROOT)}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = venv_env(PPO_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "sweep", "-s", str(path)],
        env=env,
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 trials, one population, trained in this process" in stderr  # the console: stderr
    # the command compiled the population's program while its Prefect API started (flows.cli._warm_up)
    assert "program was compiled ahead, while the Prefect API started" in stderr, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["trial_pids"] == [proc.pid]  # trained by the command's own process
    assert out["best_trial"] in (0, 1) and out["best_score_heldout"] is not None

    monkeypatch.setenv("PPO_HOME", str(home))  # read the command's MLflow store
    client = tracking.client()
    parent = client.get_run(out["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.groups"] == "1"
    assert sorted((c.info.run_name, c.info.status) for c in children) == [
        ("trial-0", "FINISHED"),
        ("trial-1", "FINISHED"),
    ]
