"""The train-ppo and promote-model flows under Prefect's test harness (real Prefect API, real MLflow sqlite)."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import small_config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.promote import promote_model
from flows.train_ppo import train_ppo
from ppo import tracking


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("PPO_HOME")
    os.environ["PPO_HOME"] = str(home)
    cfg = small_config(**{"gate.min_return": 0.0, "gate.episodes": 5, "tracking.enabled": True})
    path = home / "small.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    with prefect_test_harness(server_startup_timeout=120):
        yield path, home
    if old is not None:
        os.environ["PPO_HOME"] = old


def _task_states(flow_state) -> dict[str, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out


def test_flow_completes_registers_and_promotes_then_second_run_is_cached(harness):
    path, home = harness
    state = train_ppo(config_path=str(path), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["model_version"] == "1" and summary["gate_passed"] and summary["champion"] == "1"
    assert tracking.get_champion("ppo-cartpole") == "1"
    mv = tracking.client().get_model_version("ppo-cartpole", "1")
    for tag in ("gate.passed", "gate.iqm", "gate.ci_low", "gate.ci_high", "gate.champion_version",
                "gate.diff_ci_low", "gate.mode"):
        assert tag in mv.tags, tag
    assert mv.tags["gate.passed"] == "true"
    report_dir = home / "reports" / summary["run_id"]
    for name in ("learning_curve.png", "losses.png", "eval_returns.png", "policy.gif", "report.md", "report.html"):
        assert (report_dir / name).stat().st_size > 0, name

    again = train_ppo(config_path=str(path), return_state=True)
    assert again.is_completed()
    states = _task_states(again)
    for name in ("validate-config", "train", "evaluate", "report"):
        assert states[name] == ["Cached"], (name, states)
    for name in ("gate", "register", "promote"):
        assert states[name] == ["Completed"], (name, states)
    assert again.result()["model_version"] == "1" and not again.result()["promoted"]


def test_transient_fault_is_retried_and_flow_completes(harness, monkeypatch):
    path, home = harness
    monkeypatch.setenv("PPO_FAULTS", "train=1")
    state = train_ppo(config_path=str(path), overrides={"train.seeds": [7]}, return_state=True)
    assert state.is_completed(), state
    assert (home / "faults" / "train").read_text() == "1"
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    train_run = next(r for r in runs if r.name.startswith("train-"))
    assert train_run.run_count == 2


def test_permanent_error_fails_flow_and_leaves_alias(harness, monkeypatch):
    path, _ = harness
    before = tracking.get_champion("ppo-cartpole")
    monkeypatch.setenv("PPO_FAULTS", "register=permanent")
    state = train_ppo(config_path=str(path), overrides={"train.seeds": [8]}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="injected permanent fault in task 'register'"):
        state.result()
    assert tracking.get_champion("ppo-cartpole") == before


def test_bad_config_fails_before_training_with_field_named(harness, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  gamma: 1.5\n")
    state = train_ppo(config_path=str(bad), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="ppo.gamma"):
        state.result()


def test_promote_flow_regates_existing_version(harness):
    path, _ = harness
    champion = tracking.get_champion("ppo-cartpole")
    other = "2" if champion == "1" else "1"  # versions 1 and 2 come from the tests above
    # gated against the champion with a margin nothing fails: passes, and the alias moves to it
    summary = promote_model(version=int(other), config_path=str(path), overrides={"gate.margin": 1e6})
    assert summary["gate_passed"] and summary["promoted"] and summary["champion"] == other
    assert tracking.get_champion("ppo-cartpole") == other
    assert tracking.client().get_model_version("ppo-cartpole", other).tags["gate.champion_version"] == champion
    # the champion re-gated against itself: nothing to pair, passes, nothing moves
    again = promote_model(version=int(other), config_path=str(path))
    assert again["gate_passed"] and not again["promoted"] and again["champion"] == other
    # a gate nothing passes: the alias stays
    strict = promote_model(version=int(champion), config_path=str(path), overrides={"gate.min_return": 10_000})
    assert not strict["gate_passed"] and not strict["promoted"] and strict["champion"] == other
    assert tracking.client().get_model_version("ppo-cartpole", champion).tags["gate.passed"] == "false"
