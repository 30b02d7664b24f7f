"""Flow ``promote-model``: re-run the gate for an existing model version and move ``champion`` only if it passes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import evaluate_version, gate, promote, register, validate_config


@flow(name="promote-model", log_prints=True)
def promote_model(version: int, config_path: str | None = "configs/cartpole.yaml",
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Gate model ``version`` (of the config's registered model) against the current champion."""
    validated = validate_config(config_path, overrides or {})
    config, model_name = validated["config"], validated["model_name"]
    evaluation = evaluate_version(config, model_name, str(version))
    decision = gate(config, evaluation, evaluation["run_id"])
    register(model_name, evaluation["run_id"], decision)
    promotion = promote(model_name, str(version), decision)
    return {"model_name": model_name, "version": str(version), "gate_passed": decision["passed"],
            "gate_reason": decision["reason"], "champion": promotion["champion"], "promoted": promotion["promoted"],
            "lost_race": promotion["lost_race"]}


if __name__ == "__main__":
    import sys

    promote_model(int(sys.argv[1]))
