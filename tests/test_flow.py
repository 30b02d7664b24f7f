"""The train-ppo and promote-model flows under Prefect's test harness (real Prefect API, real MLflow sqlite).

The tests of this module share one registry and run in order: version 1 (champion), version 2 (a newer
champion), the older run re-run (no-op), retraining challengers, re-gating with promote-model.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.promote import promote_model
from flows.train_ppo import train_ppo
from ppo import tracking
from tests.helpers import run_pipeline, small_config

# two seeds (the gate's recipe check asks for both), a gate any trained policy passes on its own
GATE = {"gate.min_return": 0.0, "gate.episodes": 10, "gate.min_seeds": 2, "tracking.enabled": True}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # this module's $PPO_HOME, restored (or unset again) after it, also when the harness fails
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPO_HOME", str(home))
        path = home / "small.yaml"
        path.write_text(yaml.safe_dump(small_config(**GATE).to_dict()))
        with prefect_test_harness(server_startup_timeout=120):
            yield path, home


def _task_states(flow_state) -> dict[str, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
        )
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out


def _tags(version: str) -> dict[str, str]:
    return tracking.client().get_model_version("ppo-cartpole", version).tags


def test_flow_completes_registers_and_promotes_then_second_run_is_cached(harness):
    path, home = harness
    state = train_ppo(config_path=str(path), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["model_version"] == "1" and summary["gate_passed"] and summary["champion"] == "1"
    assert summary["outcome"] == "promoted"
    assert tracking.get_champion("ppo-cartpole") == "1"
    tags = _tags("1")
    for tag in (
        "gate.passed",
        "gate.iqm",
        "gate.ci_low",
        "gate.ci_high",
        "gate.mean_ci_low",
        "gate.champion_version",
        "gate.seeds_reaching",
        "gate.eval_seed",
        "gate.episodes",
        "gate.mode",
        "gate.status",
    ):
        assert tag in tags, tag
    assert tags["gate.passed"] == "true" and tags["gate.seeds"] == "2" and tags["gate.episodes"] == "10"
    report_dir = home / "reports" / summary["run_id"]
    for name in (
        "learning_curve.png",
        "losses.png",
        "eval_returns.png",
        "policy.gif",
        "report.md",
        "report.html",
    ):
        assert (report_dir / name).stat().st_size > 0, name

    again = train_ppo(config_path=str(path), return_state=True)
    assert again.is_completed()
    states = _task_states(again)
    for name in ("validate-config", "train", "evaluate"):
        assert states[name] == ["Cached"], (name, states)
    for name in ("gate", "register", "promote"):
        assert states[name] == ["Completed"], (name, states)
    out = again.result()
    assert out["model_version"] == "1" and not out["promoted"] and out["outcome"] == "already_champion"
    assert _tags("1") == tags  # the champion's gate tags are its own gate's, not overwritten by a no-op


def test_the_champion_never_moves_back_to_an_older_run(harness):
    path, _ = harness
    # a newer run becomes champion (a margin nothing fails: the newest passing candidate wins)
    newer = train_ppo(config_path=str(path), overrides={"train.seeds": [5, 6], "gate.margin": 1.0})
    assert newer["promoted"] and newer["champion"] == "2"
    # make run again on the first config: its run is cached and older than the champion's. It used to
    # pass the non-inferiority gate and move the alias back ("champion = version 1 (was 2)").
    old = train_ppo(config_path=str(path), overrides={"gate.margin": 1.0})
    assert old["run_id"] != newer["run_id"] and old["model_version"] == "1"
    assert old["outcome"] == "older_than_champion" and not old["promoted"], old
    assert tracking.get_champion("ppo-cartpole") == "2"
    assert _tags("1")["gate.status"] == "passed"  # version 1's own gate record is untouched
    assert len(tracking.client().search_model_versions("name='ppo-cartpole'")) == 2  # nothing registered


def test_retraining_trains_a_challenger_on_fresh_seeds_and_gates_it(harness):
    path, _ = harness
    champion = tracking.get_champion("ppo-cartpole")
    # a margin nothing fails: the newer challenger is promoted
    first = train_ppo(config_path=str(path), overrides={"gate.margin": 1.0}, retrain=True, return_state=True)
    assert first.is_completed(), first
    states = _task_states(first)
    assert states["train"] == ["Completed"] and states["challenger"] == ["Completed"], states
    out = first.result()
    assert out["seeds"] != [0, 1] and len(out["seeds"]) == 2
    run = tracking.client().get_run(out["run_id"])
    assert (
        run.data.tags["challenger"] == "true" and json.loads(run.data.params["train.seeds"]) == out["seeds"]
    )
    assert run.data.tags["challenger.flow_run_id"] == str(first.state_details.flow_run_id)
    version = out["model_version"]
    assert _tags(version)["gate.champion_version"] == champion  # gated against the champion (paired)
    assert out["outcome"] == "promoted" and tracking.get_champion("ppo-cartpole") == version
    second = train_ppo(config_path=str(path), retrain=True)
    assert second["seeds"] != out["seeds"] and second["run_id"] != out["run_id"]


def test_transient_fault_is_retried_and_flow_completes(harness, monkeypatch):
    path, home = harness
    monkeypatch.setenv("PPO_FAULTS", "train=1")
    state = train_ppo(config_path=str(path), overrides={"train.seeds": [7, 8]}, return_state=True)
    assert state.is_completed(), state
    assert (home / "faults" / "train").read_text() == "1"
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    train_run = next(r for r in runs if r.name.startswith("train-"))
    assert train_run.run_count == 2


def test_permanent_error_fails_flow_and_leaves_alias(harness, monkeypatch):
    path, _ = harness
    before = tracking.get_champion("ppo-cartpole")
    monkeypatch.setenv("PPO_FAULTS", "register=permanent")
    state = train_ppo(config_path=str(path), overrides={"train.seeds": [8, 9]}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="injected permanent fault in task 'register'"):
        state.result()
    assert tracking.get_champion("ppo-cartpole") == before


def test_a_report_that_fails_after_the_promotion_is_a_warning_and_is_written_on_the_next_run(
    harness, monkeypatch
):
    """The report runs after register and promote (it says what they did): when it fails then, the
    champion has already moved, so the flow completes with the promotion's outcome and a summary that
    says the report is missing; the next run of the same config (the champion, not gated again) writes it.
    """
    from ppo.config import ppo_home

    path, _ = harness
    own = {"train.seeds": [12, 13], "registry.model_name": "ppo-report-fault"}  # no champion yet
    monkeypatch.setenv("PPO_FAULTS", "report=permanent")
    out = train_ppo(config_path=str(path), overrides=own)
    assert out["outcome"] == "promoted" and tracking.get_champion("ppo-report-fault") == out["model_version"]
    assert "injected permanent fault in task 'report'" in out["report_error"]
    assert out["report"] is None and out["links"]["report_in_mlflow"] is None
    report = ppo_home() / "reports" / out["run_id"] / "report.html"
    assert not report.exists()
    monkeypatch.delenv("PPO_FAULTS")
    again = train_ppo(config_path=str(path), overrides=own)
    assert again["outcome"] == "already_champion" and again["report_error"] is None
    assert report.is_file() and again["report"] == str(report)


def test_bad_config_fails_before_training_with_field_named(harness, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  gamma: 1.5\n")
    state = train_ppo(config_path=str(bad), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="ppo.gamma"):
        state.result()


def test_promote_flow_regates_existing_versions(harness):
    path, _ = harness
    champion = tracking.get_champion("ppo-cartpole")
    # a new run, gated out by the pipeline: the newest version, registered with gate.passed=false
    fresh = train_ppo(config_path=str(path), overrides={"train.seeds": [21, 22], "gate.min_return": 1e5})
    assert fresh["outcome"] == "gated_out" and tracking.get_champion("ppo-cartpole") == champion
    newest = fresh["model_version"]
    assert _tags(newest)["gate.passed"] == "false"
    # re-gated with a gate nothing passes: stays out, the alias stays
    strict = promote_model(version=int(newest), config_path=str(path), overrides={"gate.min_return": 10_000})
    assert strict["outcome"] == "gated_out" and strict["champion"] == champion
    # re-gated with a margin nothing fails: newer than the champion, so it is promoted
    up = promote_model(version=int(newest), config_path=str(path), overrides={"gate.margin": 1.0})
    assert up["outcome"] == "promoted" and tracking.get_champion("ppo-cartpole") == newest
    assert _tags(newest)["gate.champion_version"] == champion and _tags(newest)["gate.passed"] == "true"
    # the champion re-gated: nothing to gate, nothing moves
    same = promote_model(version=int(newest), config_path=str(path))
    assert same["outcome"] == "already_champion" and same["champion"] == newest
    # a version older than the champion: never promoted, whatever its figures
    older = promote_model(version=1, config_path=str(path), overrides={"gate.margin": 1.0})
    assert older["outcome"] == "older_than_champion" and not older["promoted"]
    assert tracking.get_champion("ppo-cartpole") == newest


def test_training_registers_nothing_and_ungated_versions_cannot_serve(harness):
    from ppo import PPOTrainer

    before = len(tracking.client().search_model_versions("name='ppo-cartpole'"))
    result = PPOTrainer(config=small_config(**GATE, **{"train.seeds": [11]}), enable_mlflow=True).train()
    assert "model_version" not in result
    assert len(tracking.client().search_model_versions("name='ppo-cartpole'")) == before
    # a version registered by hand (not through the register task) has no gate: it can never be champion
    by_hand = tracking.register_model(result["run_id"], "ppo-cartpole")
    with pytest.raises(tracking.UngatedVersionError, match="no passed gate"):
        tracking.set_champion("ppo-cartpole", by_hand)


def test_pipeline_exit_code_tells_gated_out_from_promoted(harness, tmp_path):
    path, home = harness
    env = {**os.environ, "PPO_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    _, summary = run_pipeline(path, env, "--set", "gate.min_return=100000", code=4)
    assert summary["outcome"] == "gated_out" and not summary["promoted"] and summary["champion"] is None


def test_the_overlapped_start_up_decides_exactly_as_the_serial_one(harness, tmp_path):
    """``ppo pipeline`` compiles, opens the MLflow store and imports the plotting stack while its Prefect
    API starts (flows.cli._warm_up); with ``PPO_OVERLAP=0`` all of it happens after, in the tasks. Same
    config and seeds: the same training, the same deployed policy, the same champion either way. (The
    gate's figures differ by design: its held-out episodes are drawn from each candidate's run id.)"""
    from mlflow.tracking import MlflowClient

    path, _ = harness
    summaries, finals = {}, {}
    for overlap in ("0", "1"):
        home = tmp_path / f"home-{overlap}"
        env = {**os.environ, "PPO_HOME": str(home), "PPO_OVERLAP": overlap}
        for key in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
            env.pop(key, None)
        out, summaries[overlap] = run_pipeline(path, env)
        # the train task found its program compiled by the warm-up, and says so; never without it
        assert ("compiled ahead, while the Prefect API started" in out.stderr) == (overlap == "1"), out.stderr
        run = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(summaries[overlap]["run_id"])
        finals[overlap] = (run.data.metrics["eval/return_mean"], run.data.tags["best_seed"])
    serial, overlapped = summaries["0"], summaries["1"]
    assert serial["outcome"] == overlapped["outcome"] == "promoted"
    for key in ("env_steps", "seeds", "converged", "model_version", "champion"):
        assert overlapped[key] == serial[key], key
    assert finals["1"] == finals["0"]  # the trainer's final evaluation and the seed it deploys


def test_a_re_run_of_a_finished_training_does_not_import_jax_at_start_up(tmp_path):
    """The warm-up's compile step (flows.cli._compile_ahead) on a config whose training finished (its
    checkpoint folder holds result.json): nothing to compile, and JAX is not even imported (a cached
    re-run's tasks need no JAX; importing it cost ~0.9 s of the start-up's one free core). Without the
    result, it imports JAX and compiles."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from flows.cli import _compile_ahead\n"
        "from ppo.checkpoint import checkpoint_folder\n"
        "from tests.helpers import small_config\n"
        "from ppo.runtime import uses_host_envs\n"
        "config = small_config()\n"
        "assert not uses_host_envs(config)\n"
        "folder = checkpoint_folder(config)\n"
        "folder.mkdir(parents=True, exist_ok=True)\n"
        "(folder / 'result.json').write_text('{}')\n"
        "_compile_ahead([config])\n"
        "print('jax' in sys.modules)\n"
    )
    env = {**os.environ, "PPO_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stdout


def test_flow_run_heartbeats_are_off_only_on_an_embedded_api(monkeypatch):
    """``ppo pipeline`` on its embedded API runs its flow without Prefect's heartbeat thread (whose end the
    flow waits for, up to 1 s; nothing watches heartbeats on an API that ends with the command); on a
    configured API (make serve's, a team's) heartbeats stay as configured."""
    from prefect.settings import get_current_settings

    from flows.cli import EMBEDDED_API_ENV, _heartbeats

    configured = get_current_settings().flows.heartbeat_frequency
    assert configured is not None
    monkeypatch.delenv(EMBEDDED_API_ENV, raising=False)
    with _heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == configured
    monkeypatch.setenv(EMBEDDED_API_ENV, "http://127.0.0.1:1/api")
    with _heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == configured
