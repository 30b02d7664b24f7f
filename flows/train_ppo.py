"""Flow ``train-ppo``: validate → train → evaluate → gate → report → register → promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import evaluate_candidate, gate, promote, register, report, train, validate_config


@flow(name="train-ppo", log_prints=True)
def train_ppo(config_path: str | None = "configs/cartpole.yaml", overrides: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Train a PPO agent from a config and carry it to the registry; returns a JSON summary."""
    validated = validate_config(config_path, overrides or {})
    config = validated["config"]
    trained = train(config, validated["config_hash"])
    evaluation = evaluate_candidate(config, trained["checkpoint_dir"])
    decision = gate(config, evaluation, trained["run_id"])
    files = report(config, trained, evaluation, decision)
    model_name = validated["model_name"]
    version = register(model_name, trained["run_id"], decision)
    promotion = promote(model_name, version, decision)
    return {"run_id": trained["run_id"], "model_name": model_name, "model_version": version,
            "gate_passed": decision["passed"], "gate_reason": decision["reason"], "iqm": decision["iqm"],
            "ci": [decision["ci_low"], decision["ci_high"]], "champion": promotion["champion"],
            "promoted": promotion["promoted"], "converged": trained["converged"],
            "env_steps": trained["env_steps"], "report": files["report_html"]}


if __name__ == "__main__":
    train_ppo()
