"""Flow ``train-ppo``: validate → train → evaluate → gate → report → register → promote.

With ``retrain=True`` (the weekly schedule in prefect.yaml) the same recipe is trained again on fresh
seeds drawn from the flow run, as a challenger that must beat the gate against the champion.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from tasks import (
    challenger,
    evaluate_candidate,
    gate,
    outcome,
    promote,
    register,
    report,
    train,
    validate_config,
)


@flow(name="train-ppo", log_prints=True)
def train_ppo(
    config_path: str | None = "configs/cartpole.yaml",
    overrides: dict[str, Any] | None = None,
    retrain: bool = False,
) -> dict[str, Any]:
    """Train a PPO agent from a config and carry it to the registry; returns a JSON summary."""
    validated = validate_config(config_path, overrides or {})
    config, config_hash, run_tags = validated["config"], validated["config_hash"], None
    if retrain:
        drawn = challenger(config, str(flow_run.id))
        config, config_hash, run_tags = drawn["config"], drawn["config_hash"], drawn["run_tags"]
    trained = train(config, config_hash, run_tags)
    evaluation = evaluate_candidate(config, trained["checkpoint_dir"], trained["run_id"])
    decision = gate(config, evaluation, trained["run_id"])
    files = report(config, trained, evaluation, decision)
    model_name = validated["model_name"]
    version = register(model_name, trained["run_id"], decision)
    promotion = promote(model_name, version, decision)
    return {
        "outcome": outcome(decision, promotion),
        "run_id": trained["run_id"],
        "model_name": model_name,
        "model_version": version,
        "seeds": config["train"]["seeds"],
        "gate_passed": decision["passed"] if decision["status"] in ("passed", "failed") else None,
        "gate_reason": decision["reason"],
        "iqm": decision["iqm"],
        "ci": [decision["ci_low"], decision["ci_high"]],
        "champion": promotion["champion"],
        "promoted": promotion["promoted"],
        "converged": trained["converged"],
        "env_steps": trained["env_steps"],
        "report": files["report_html"],
    }


if __name__ == "__main__":
    train_ppo()
